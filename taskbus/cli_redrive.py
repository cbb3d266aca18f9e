"""`taskbus redrive QUEUE`: a durable, paced re-drive of a queue's dead letters
(`taskbus.admin.redrive`), run by this command with a progress bar, on the operator commands'
session, output and exit codes (`cli_ops`)."""

from __future__ import annotations

import datetime as dt
import threading
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from taskbus.cli_ops import EXIT_INTERRUPTED, Ops, _count, command


class Moment(click.ParamType[int]):
    """An ISO-8601 time (UTC when it names no offset), as epoch milliseconds."""

    name = "ISO-TIME"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            moment = dt.datetime.fromisoformat(value)
        except ValueError:
            self.fail(f"{value!r} is not an ISO-8601 time (e.g. 2026-12-01T09:30:00Z)", param, ctx)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.timezone.utc)
        return int(moment.timestamp() * 1000)


@command
@click.argument("queue")
@click.option("--error-type", default=None, help="Only dead letters whose last error is of this type.")
@click.option("--type", "task_type", default=None, help="Only tasks of this type.")
@click.option("--since", type=Moment(), default=None, help="Only dead letters dead at or after this time.")
@click.option("--until", type=Moment(), default=None, help="Only dead letters dead at or before this time.")
@click.option("--rate", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Tasks per second (default: REDRIVE_RATE, 50).")
@click.option("--dry-run", is_flag=True, help="Only count the dead letters that match.")
def redrive(ops: Ops, queue: str, error_type: str | None, task_type: str | None, since: int | None,
            until: int | None, rate: float | None, dry_run: bool) -> None:
    """Move QUEUE's dead letters back to queued, paced, as a durable job run here with a progress
    bar. Ctrl-C stops following it: the job goes on in the workers."""
    job = ops.redrives.create(queue, actor=ops.actor, error_type=error_type, task_type=task_type,
                              since_ms=since, until_ms=until, rate=rate, dry_run=dry_run)
    if dry_run:
        if ops.as_json:
            return ops.emit(job)
        return ops.say(f"{_count(job['matched'], 'dead letter')} of {queue} would be re-driven")
    job, followed = _follow(ops, job)
    if ops.as_json:
        ops.emit(job)
    if not followed:
        click.echo(f"taskbus: stopped following re-drive {job['id']} ({job['moved']} of {job['total']} moved): "
                   f"it goes on in the workers (one takes it over once this command's lease lapses)", err=True)
        raise SystemExit(EXIT_INTERRUPTED)
    if job["state"] == "cancelled":  # by someone else, meanwhile
        click.echo(f"taskbus: re-drive {job['id']} was cancelled by {job['cancelled_by']} after moving "
                   f"{job['moved']} of {job['total']}", err=True)
        raise SystemExit(1)
    if not ops.as_json:
        ops.say(f"re-drove {job['moved']} of {_count(job['total'], 'dead letter')} of {queue} (job {job['id']})")


def _follow(ops: Ops, job: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Run the re-drive here until it ends, with a progress bar on stderr (none with --json);
    on Ctrl-C stop running it and say so: (the job as last seen, whether it ended here)."""
    stop = threading.Event()
    outcome: list[dict[str, Any]] = []
    failure: list[BaseException] = []
    progress = Progress(TextColumn("re-drive {task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeRemainingColumn(), console=Console(stderr=True), disable=ops.as_json)
    bar = progress.add_task(job["id"], total=job["total"], completed=job["moved"])

    def on_progress(seen: dict[str, Any]) -> None:
        progress.update(bar, total=seen["total"], completed=seen["moved"])

    def run() -> None:
        try:
            outcome.append(ops.redrives.run(job["id"], stop, on_progress))
        except BaseException as exc:  # raised again in the main thread, as one line
            failure.append(exc)

    runner = threading.Thread(target=run, name="taskbus-redrive", daemon=True)
    followed = True
    with progress:
        runner.start()
        try:
            runner.join()
        except KeyboardInterrupt:
            followed = False
            stop.set()
            runner.join()
    if failure:
        raise failure[0]
    return (outcome[0] if outcome else ops.redrives.get(job["id"]) or job), followed
