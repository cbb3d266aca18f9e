"""Slot arithmetic: which instants (whole epoch seconds) a schedule fires at. Pure functions.

Cron slots come from cronsim in the schedule's zone, so DST follows Debian cron: a local time
that does not exist (spring-forward) fires at the first time after the gap, a repeated local
time (fall-back) fires once, at its first occurrence; fields with a wildcard hour (`0 * * * *`)
fire in both offsets of a repeated hour, being different instants. `every_s` slots are the
multiples of `every_s` since the epoch: every worker computes the same ones, zones play no part.
"""

from __future__ import annotations

import datetime
import hashlib
from zoneinfo import ZoneInfo

from cronsim import CronSim

from taskbus.schedules.model import Schedule


def next_after(schedule: Schedule, t: int) -> int:
    """The first slot strictly after `t`."""
    if schedule.every_s is not None:
        return (t // schedule.every_s + 1) * schedule.every_s
    assert schedule.cron is not None
    return int(next(CronSim(schedule.cron, _local(schedule, t))).timestamp())


def due(schedule: Schedule, after: int, now: int, limit: int) -> list[int]:
    """The latest `limit` slots in (`after`, `now`], oldest first."""
    if now <= after:
        return []
    if schedule.every_s is not None:
        e = schedule.every_s
        newest = now // e * e
        oldest = max(after // e + 1, newest // e - limit + 1) * e
        return list(range(oldest, newest + 1, e))
    assert schedule.cron is not None
    # Step back `limit` slots with cronsim's reverse iterator only to find where to start, then
    # go forward: forward iteration is the one that defines the slots (and their DST rules).
    start = after
    back = CronSim(schedule.cron, _local(schedule, now), reverse=True)
    for _ in range(limit + 1):
        earlier = int(next(back).timestamp())
        if earlier <= after:
            break
        start = earlier - 1
    found: list[int] = []
    forward = CronSim(schedule.cron, _local(schedule, start))
    while (slot := int(next(forward).timestamp())) <= now:
        if slot > after:
            found.append(slot)
    return found[-limit:]


def slot_task_id(queue: str, name: str, slot: int) -> str:
    """The one id a slot's task can have: a second firing of the slot finds it taken."""
    digest = hashlib.sha256(f"{name}\x00{slot}".encode()).hexdigest()[:32]
    return f"{queue}~{digest}"


def _local(schedule: Schedule, t: int) -> datetime.datetime:
    return datetime.datetime.fromtimestamp(t, ZoneInfo(schedule.tz))
