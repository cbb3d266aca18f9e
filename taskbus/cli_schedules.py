"""`taskbus schedules list|pause|resume|trigger|delete`: the stored schedules
(`taskbus.schedules`), on the operator commands' session, output and exit codes (`cli_ops`)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import click

from taskbus.cli_ops import CONTEXT, EPILOG, Ops, _session, _table


@click.group(context_settings=CONTEXT, epilog=EPILOG)
def schedules() -> None:
    """The schedules stored in Redis (declared with `registry.schedule`): list, pause, resume,
    trigger, delete."""


@schedules.command("list", context_settings=CONTEXT)
@click.option("--queue", default=None, help="Only this queue's schedules (default: every queue).")
@click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON document on stdout.")
def schedules_list(queue: str | None, as_json: bool) -> None:
    """The stored schedules, with their last and next slot."""
    with _session(as_json) as ops:
        rows = [s.view() for s in ops.schedules.load([queue] if queue else ops.schedules.queues())]
        if ops.as_json:
            return ops.emit({"schedules": rows})
        columns = ["name", "queue", "type", "cron", "every_s", "tz", "misfire", "overlap", "paused", "next_slot_s"]
        for row in rows:
            row["next_slot_s"] = dt.datetime.fromtimestamp(row["next_slot_s"], dt.timezone.utc).isoformat()
        ops.out.print(_table(columns, [[row[c] for c in columns] for row in rows]))


def _schedule_action(name: str, help_text: str) -> Callable[[Callable[[Ops, str, str], str]], click.Command]:
    def decorate(fn: Callable[[Ops, str, str], str]) -> click.Command:
        @schedules.command(name, context_settings=CONTEXT, help=help_text)
        @click.argument("schedule", metavar="NAME")
        @click.option("--queue", default="default", show_default=True)
        @click.option("--json", "as_json", is_flag=True, help="Print exactly one JSON document on stdout.")
        def run(schedule: str, queue: str, as_json: bool) -> None:
            with _session(as_json) as ops:
                said = fn(ops, queue, schedule)
                if ops.as_json:
                    return ops.emit({"schedule": schedule, "queue": queue, "result": said})
                ops.say(said)

        return run

    return decorate


@_schedule_action("pause", "Pause schedule NAME: its slots pass unfired until it is resumed.")
def schedules_pause(ops: Ops, queue: str, name: str) -> str:
    ops.schedules.set_paused(queue, name, True, ops.actor)
    return f"paused {name}"


@_schedule_action("resume", "Resume schedule NAME from its next slot (slots passed while paused do not fire).")
def schedules_resume(ops: Ops, queue: str, name: str) -> str:
    ops.schedules.set_paused(queue, name, False, ops.actor)
    return f"resumed {name}"


@_schedule_action("trigger", "Enqueue schedule NAME's task now (a run of its own: no slot is used); print its id.")
def schedules_trigger(ops: Ops, queue: str, name: str) -> str:
    s = ops.schedules.get(queue, name).schedule
    return ops.client.enqueue(s.task_type, s.payload if s.payload is not None else {}, queue=s.queue).id


@_schedule_action("delete", "Delete schedule NAME (a worker that still declares it stores it again when it starts).")
def schedules_delete(ops: Ops, queue: str, name: str) -> str:
    ops.schedules.delete(queue, name)
    return f"deleted {name}"
