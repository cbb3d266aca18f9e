"""The operator commands of `taskbus`: queues, tasks, show, cancel, retry, pause, resume, purge,
workers and enqueue; `redrive` (taskbus.cli_redrive) and `schedules` (list, pause, resume,
trigger, delete: taskbus.cli_schedules) are built on the same session. Each is a thin
layer over the core (`taskbus.admin`, `taskbus.client`, `taskbus.schedules`): arguments in, a
rich table for people or `--json` (exactly one JSON document on stdout, an error too) for scripts.

Exit codes, for scripts to branch on (not `serve`'s 3 for a bad setting: these are stable):
0 done; 1 not found or refused (a 409: the task's state forbids it); 2 usage or configuration;
3 Redis unavailable; 130 interrupted by Ctrl-C (a re-drive no longer followed goes on in the workers).
Errors are one line on stderr, never a traceback. The audit trail names the actor `cli:<os user>`.
"""

from __future__ import annotations

import contextlib
import functools
import getpass
import sys
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from taskbus import codec
from taskbus.admin import STATES, Admin
from taskbus.admin.ops import MAX_PAGE, PURGEABLE
from taskbus.admin.redrive import Redrives
from taskbus.client import Client
from taskbus.errors import (
    BadRequest,
    ConfigError,
    Conflict,
    Forbidden,
    NotFound,
    RequestError,
    TaskbusError,
    Unavailable,
)
from taskbus.schedules.store import ScheduleStore
from taskbus.settings import Settings, mask_url

CONTEXT = {"help_option_names": ["-h", "--help"]}
EPILOG = ("Configured by environment variables (REDIS_URL, KEY_PREFIX, ...). Exit status: 0 done, 1 not found "
          "or refused, 2 usage or a bad setting, 3 Redis unavailable.")
EXIT_INTERRUPTED = 130  # the shell's code for a command ended by SIGINT (Ctrl-C)
# The first class that matches decides; a RequestError not named before it is the caller's (usage).
EXIT_CODES: tuple[tuple[type[TaskbusError], int], ...] = (
    (Unavailable, 3), (ConfigError, 2), (NotFound, 1), (Conflict, 1), (Forbidden, 1), (RequestError, 2),
)
WIDE = 200  # piped output: whole lines for grep rather than a table folded into 80 columns


class ConfirmationRequired(RequestError):
    """A destructive command run without `--yes`."""

    code = "confirmation_required"


class Ops:
    """What one command works with: the settings, read once; the core's objects, opened on first
    use and closed when the command ends; the output mode; the actor for the audit trail."""

    def __init__(self, settings: Settings, as_json: bool) -> None:
        self.settings = settings
        self.as_json = as_json
        self.actor = f"cli:{_os_user()}"
        self.out = Console(width=None if sys.stdout.isatty() else WIDE, highlight=False)

    @functools.cached_property
    def admin(self) -> Admin:
        return Admin(self.settings)

    @functools.cached_property
    def redrives(self) -> Redrives:
        return Redrives(self.settings)

    @functools.cached_property
    def client(self) -> Client:
        return Client(self.settings)

    @functools.cached_property
    def schedules(self) -> ScheduleStore:
        return ScheduleStore(self.settings)

    def emit(self, document: Any) -> None:
        click.echo(codec.dumps(document).decode())

    def say(self, line: str) -> None:
        self.out.print(line, markup=False, soft_wrap=True)  # a traceback line stays whole

    def close(self) -> None:
        for name in ("admin", "redrives", "client", "schedules"):
            if name in self.__dict__:
                with contextlib.suppress(TaskbusError):
                    self.__dict__[name].close()


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no USER/LOGNAME and no passwd entry (a bare container)
        return "unknown"


@contextlib.contextmanager
def _session(as_json: bool) -> Iterator[Ops]:
    """An `Ops` for one command; a taskbus error becomes one line and its exit code."""
    settings: Settings | None = None
    try:
        settings = Settings.from_env()
        ops = Ops(settings, as_json)
        try:
            yield ops
        finally:
            ops.close()
    except KeyboardInterrupt:  # Ctrl-C on a wait: the shell's code, not click's "Aborted!" and 1
        raise SystemExit(EXIT_INTERRUPTED) from None
    except TaskbusError as exc:
        code = next((code for kind, code in EXIT_CODES if isinstance(exc, kind)), None)
        if code is None:
            raise
        message = str(exc)
        if isinstance(exc, Unavailable) and settings is not None:
            message = f"{message} (REDIS_URL={mask_url(settings.redis_url)})"
        if isinstance(exc, RequestError):
            _fail(as_json, code, exc.code, message, exc.details)
        _fail(as_json, code, "unavailable" if isinstance(exc, Unavailable) else "bad_setting", message, {})


def _fail(as_json: bool, exit_code: int, code: str, message: str, details: dict[str, object]) -> NoReturn:
    if as_json:
        click.echo(codec.dumps({"error": {"code": code, "message": message, **details}}).decode())
    click.echo(f"taskbus: {message}", err=True)
    raise SystemExit(exit_code)


def command(fn: Callable[..., None]) -> click.Command:
    """An operator command: `fn(ops, **params)`, with `--json` and the shared error handling."""

    @functools.wraps(fn)
    def run(as_json: bool, **params: Any) -> None:
        with _session(as_json) as ops:
            fn(ops, **params)

    option = click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON document on stdout.")
    return click.command(context_settings=CONTEXT, epilog=EPILOG)(option(run))


class JsonText(click.ParamType[Any]):
    """JSON text, read by the rules the enqueue function applies to a body."""

    name = "JSON"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return codec.loads_strict(value.encode())
        except BadRequest as exc:
            self.fail(exc.message, param, ctx)


# --- presentation --------------------------------------------------------------------------------


def _cell(value: Any) -> Text:
    """A table cell as plain text: task data may hold rich markup such as `[red]`."""
    if value is None:
        return Text("")
    if isinstance(value, bool):
        return Text("yes" if value else "")
    if isinstance(value, float):
        return Text(f"{value:.1f}")
    if isinstance(value, (list, tuple)):
        return Text(", ".join(str(item) for item in value))
    if isinstance(value, dict) and "type" in value and "message" in value:  # an error
        return Text(f"{value['type']}: {value['message']}")
    if isinstance(value, dict):
        return Text(codec.dumps(value).decode())
    return Text(str(value))


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> Table:
    table = Table(*columns, title=title, title_justify="left")
    for index, column in enumerate(table.columns):  # numbers right-aligned, as in any report
        if rows and all(isinstance(row[index], (int, float, type(None))) and not isinstance(row[index], bool)
                        for row in rows):
            column.justify = "right"
    for row in rows:
        table.add_row(*(_cell(value) for value in row))
    return table


def _print_task(ops: Ops, task: dict[str, Any]) -> None:
    """The detail of a task: its fields, payload, result, error with traceback, history, audit."""
    fields = ["id", "type", "queue", "status", "attempts", "max_attempts", "created_at", "started_at",
              "finished_at", "cancel_requested_at"]
    grid = Table.grid(padding=(0, 2))
    for name in fields:
        if task.get(name) is not None:
            grid.add_row(Text(name), _cell(task[name]))
    if task.get("dead_letter"):
        grid.add_row(Text("dead since"), _cell(task["dead_letter"].get("at")))
    ops.out.print(grid)
    for name in ("payload", "result"):
        if task.get(name) is not None:
            ops.say(f"{name}: {codec.dumps(task[name]).decode()}")
    error = task.get("error")
    if error:
        ops.say(f"error: {error['type']}: {error['message']}")
        if error.get("traceback"):
            ops.say(error["traceback"].rstrip())
    if task.get("history"):
        ops.out.print(_table(["attempt", "worker", "started", "finished", "outcome", "error"], [
            [h["attempt"], h["worker"], h["started_at"], h["finished_at"], h["outcome"], h["error"]]
            for h in task["history"]], title="history"))
    if task.get("audit"):
        ops.out.print(_table(["at", "actor", "action", "detail"], [
            [a["at"], a["actor"], a["action"], a["detail"]] for a in task["audit"]], title="audit"))


# --- the commands --------------------------------------------------------------------------------


@command
def queues(ops: Ops) -> None:
    """The overview of every known queue: counts, oldest ages (s), the last hour, paused or not."""
    rows = ops.admin.overviews()
    if ops.as_json:
        return ops.emit({"queues": rows})
    ops.out.print(_table(
        ["queue", "paused", "queued", "scheduled", "throttled", "running", "dead", "oldest queued s",
         "oldest running s", "succeeded 1h", "failed 1h", "cancelled 1h", "dead evicted", "workers"],
        [[o["queue"], o["paused"], *(o["counts"][k] for k in ("queued", "scheduled", "throttled", "running", "dead")),
          o["oldest_age_s"]["queued"], o["oldest_age_s"]["running"],
          *(o["last_hour"][k] for k in ("succeeded", "failed", "cancelled")), o["dead_letters"]["evicted"],
          o["workers"]] for o in rows]))


EXTRA_COLUMNS = {"scheduled": ["due_at"], "throttled": ["limit_key"], "running": ["worker", "idle_s"],
                 "dead": ["dead_at", "error"]}


@command
@click.argument("queue")
@click.option("--state", required=True, type=click.Choice([*STATES, "failed"]),
              help="Which tasks (failed: the same as dead).")
@click.option("--limit", type=click.IntRange(1, MAX_PAGE), default=50, show_default=True, help="Tasks per page.")
@click.option("--cursor", default=None, help="The next cursor a previous page printed.")
def tasks(ops: Ops, queue: str, state: str, limit: int, cursor: str | None) -> None:
    """One page of QUEUE's tasks in a state, and the cursor of the next page."""
    state = "dead" if state == "failed" else state
    page = ops.admin.tasks(queue, state, cursor=cursor, limit=limit)
    if ops.as_json:
        return ops.emit(page)
    columns = ["id", "type", "status", "attempts", "created_at", *EXTRA_COLUMNS.get(state, [])]
    ops.out.print(_table(columns, [[row.get(name) for name in columns] for row in page["tasks"]]))
    after = page["next_cursor"]
    ops.say(f"next page: taskbus tasks {queue} --state {state} --cursor {after}" if after else "last page")


@command
@click.argument("task_id", metavar="ID")
def show(ops: Ops, task_id: str) -> None:
    """A task in detail: payload, result, error with traceback, attempt history and audit trail."""
    task = ops.admin.task(task_id)
    if task is None:
        raise NotFound(f"no task {task_id} (unknown, malformed or expired)")
    if ops.as_json:
        return ops.emit(task)
    _print_task(ops, task)


@command
@click.argument("task_id", metavar="ID")
def cancel(ops: Ops, task_id: str) -> None:
    """Cancel a task: a queued or scheduled one never starts; a running one is asked to stop."""
    outcome, task = ops.admin.cancel(task_id, ops.actor)
    if ops.as_json:
        return ops.emit({"outcome": outcome, "task": task})
    if outcome == "cancelled":
        ops.say(f"cancelled {task_id}: it never starts")
    else:
        ops.say(f"cancelling {task_id}: its handler sees ctx.cancelled; the task ends cancelled when the "
                f"handler returns, or at the latest after CANCEL_GRACE_S ({ops.settings.cancel_grace_s:g} s)")


@command
@click.argument("task_id", metavar="ID")
def retry(ops: Ops, task_id: str) -> None:
    """Retry a failed or cancelled task: queued again under the same id, its history kept."""
    task = ops.admin.retry(task_id, ops.actor)
    if ops.as_json:
        return ops.emit(task)
    ops.say(f"retried {task_id}: {task['status']}")


@command
@click.argument("queue")
def pause(ops: Ops, queue: str) -> None:
    """Pause QUEUE: workers start nothing from it; enqueues are still accepted."""
    overview = ops.admin.pause(queue, ops.actor)
    if ops.as_json:
        return ops.emit(overview)
    ops.say(f"paused {queue}: workers start nothing from it ({overview['counts']['queued']} queued)")


@command
@click.argument("queue")
def resume(ops: Ops, queue: str) -> None:
    """Resume a paused QUEUE."""
    overview = ops.admin.resume(queue, ops.actor)
    if ops.as_json:
        return ops.emit(overview)
    ops.say(f"resumed {queue} ({overview['counts']['queued']} queued)")


@command
@click.argument("queue")
@click.option("--state", required=True, type=click.Choice(PURGEABLE),
              help="queued: each becomes cancelled and never runs; dead: the dead letters are dropped.")
@click.option("--yes", is_flag=True, help="Confirm: there is no undo.")
def purge(ops: Ops, queue: str, state: str, yes: bool) -> None:
    """Remove every queued task or every dead letter of QUEUE (with --yes)."""
    if not yes:
        count = ops.admin.overview(queue)["counts"][state]
        raise ConfirmationRequired(f"purge would remove {_count(count, state + ' task')} of {queue}, with no undo; "
                                   f"add --yes to confirm")
    count = ops.admin.purge(queue, state, ops.actor)
    if ops.as_json:
        return ops.emit({"queue": queue, "state": state, "purged": count})
    ops.say(f"purged {_count(count, state + ' task')} of {queue}")


@command
@click.option("--queue", default=None, help="Only the workers that serve this queue.")
def workers(ops: Ops, queue: str | None) -> None:
    """The live workers: where they run, what they serve, how busy, when last seen."""
    rows = ops.admin.workers(queue)
    if ops.as_json:
        return ops.emit({"workers": rows})
    columns = ["consumer", "host", "pid", "queues", "types", "concurrency", "in_flight", "seen_at", "version"]
    ops.out.print(_table(columns, [[row.get(name) for name in columns] for row in rows]))


@command
@click.argument("task_type", metavar="TYPE")
@click.argument("payload", type=JsonText(), required=False)
@click.option("--queue", default="default", show_default=True)
@click.option("--wait", type=click.FloatRange(min=0), default=None, metavar="S",
              help="Wait up to S seconds for the task to finish, then print it.")
@click.option("--priority", type=click.IntRange(0, 9), default=None, help="0-9, higher first (default 5).")
def enqueue(ops: Ops, task_type: str, payload: Any, queue: str, wait: float | None, priority: int | None) -> None:
    """Enqueue a task of TYPE with a JSON PAYLOAD (default {}); print its id."""
    enqueued = ops.client.enqueue(task_type, payload, queue=queue, priority=priority)
    task = ops.client.wait(enqueued.id, wait) if wait is not None else None
    if ops.as_json:
        document: dict[str, Any] = {"id": enqueued.id, "status": enqueued.status, "created": enqueued.created}
        return ops.emit(document if wait is None else {**document, "task": task})
    click.echo(enqueued.id)
    if task is not None:
        _print_task(ops, task)


COMMANDS = [queues, tasks, show, cancel, retry, pause, resume, purge, workers, enqueue]  # + cli_redrive's
