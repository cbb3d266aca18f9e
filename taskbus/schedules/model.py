"""A schedule as declared in a handlers module, validated once, with one JSON encoding.

The encoding is what the workers store in Redis and compare: its digest is the schedule's
version, so two workers with the same declaration agree without talking to each other.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from taskbus.task import NAME_RE

MISFIRES = ("skip", "once", "all")
MAX_CATCHUP_LIMIT = 1000


@dataclasses.dataclass(frozen=True)
class Schedule:
    """Run `task_type` with `payload` on `queue` at every slot of `cron` (5 fields, or 6 with
    seconds first, in zone `tz`) or every `every_s` seconds (slots at multiples of it since the
    epoch). `misfire` says what slots missed while no scheduler ran do; `overlap=False` skips a
    slot while the schedule's previous task is unfinished."""

    name: str
    task_type: str
    cron: str | None = None
    every_s: int | None = None
    tz: str = "UTC"
    payload: Any = None
    queue: str = "default"
    misfire: str = "once"
    max_catchup: int = 10
    overlap: bool = True

    def __post_init__(self) -> None:
        problem = _problem(self)
        if problem:
            raise ValueError(f"schedule {self.name!r}: {problem}")

    def definition(self) -> str:
        """The canonical JSON stored in Redis (sorted keys: equal declarations, equal bytes)."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    def version(self) -> str:
        return hashlib.sha256(self.definition().encode()).hexdigest()[:16]

    @classmethod
    def from_definition(cls, raw: str) -> Schedule:
        return cls(**json.loads(raw))


def _problem(s: Schedule) -> str | None:
    """What is wrong with `s`, or None."""
    if not isinstance(s.name, str) or not NAME_RE.fullmatch(s.name):
        return "name must be 1-128 characters of A-Z a-z 0-9 _ . : -"
    for field, value in (("task_type", s.task_type), ("queue", s.queue)):
        if not isinstance(value, str) or not NAME_RE.fullmatch(value):
            return f"{field} must be 1-128 characters of A-Z a-z 0-9 _ . : -"
    if (s.cron is None) == (s.every_s is None):
        return "give exactly one of cron and every_s"
    if s.every_s is not None and (not _is_int(s.every_s) or s.every_s < 1):
        return "every_s must be an integer >= 1"
    try:
        zone = ZoneInfo(s.tz)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return f"unknown time zone {s.tz!r}"
    if s.cron is not None:
        if not isinstance(s.cron, str) or len(s.cron.split()) not in (5, 6):
            return "cron must have 5 fields, or 6 with seconds first"
        try:
            next(CronSim(s.cron, datetime.datetime(2000, 1, 1, tzinfo=zone)))
        except CronSimError as exc:
            return f"invalid cron {s.cron!r} ({exc})"
        except StopIteration:  # cronsim looks 50 years ahead
            return f"cron {s.cron!r} never fires"
    if s.misfire not in MISFIRES:
        return f"misfire must be one of {', '.join(MISFIRES)}"
    if not _is_int(s.max_catchup) or not 1 <= s.max_catchup <= MAX_CATCHUP_LIMIT:
        return f"max_catchup must be an integer from 1 to {MAX_CATCHUP_LIMIT}"
    if not isinstance(s.overlap, bool):
        return "overlap must be True or False"
    try:
        json.dumps(s.payload)
    except (TypeError, ValueError):
        return "payload must be JSON-serialisable"
    return None



def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
