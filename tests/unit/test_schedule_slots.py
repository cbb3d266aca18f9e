"""Slot arithmetic with fixed instants: DST in three zones (one with a 30-minute shift),
`every_s` alignment, catch-up limits, deterministic ids and declaration errors."""

from __future__ import annotations

import datetime

import pytest

from taskbus.registry import Registry
from taskbus.schedules.model import Schedule
from taskbus.schedules.slots import due, next_after, slot_task_id
from taskbus.task import queue_of

UTC = datetime.timezone.utc


def at(*fields: int) -> int:
    """A UTC instant as epoch seconds."""
    return int(datetime.datetime(*fields, tzinfo=UTC).timestamp())


def slots(cron: str, tz: str, start: int, end: int) -> list[int]:
    """Every slot in (start, end], by stepping `next_after` (the loop's own function)."""
    s = Schedule("dst", "t", cron=cron, tz=tz)
    found, t = [], start
    while (t := next_after(s, t)) <= end:
        found.append(t)
    assert due(s, start, end, 1000) == found  # the catch-up path agrees with the stepping path
    return found


# (zone, cron, window start and end in UTC, the expected slots in UTC)
CASES = [
    # Berlin spring-forward 2026-03-29 02:00 CET -> 03:00 CEST: 02:30 does not exist, runs at 03:00 CEST.
    ("Europe/Berlin", "30 2 * * *", at(2026, 3, 28, 12), at(2026, 3, 30, 12),
     [at(2026, 3, 29, 1, 0), at(2026, 3, 30, 0, 30)]),
    # Berlin fall-back 2026-10-25 03:00 CEST -> 02:00 CET: 02:30 happens twice, runs once (the first).
    ("Europe/Berlin", "30 2 * * *", at(2026, 10, 24, 12), at(2026, 10, 26, 12),
     [at(2026, 10, 25, 0, 30), at(2026, 10, 26, 1, 30)]),
    # Hourly across the same fall-back: 02:00 CEST and 02:00 CET are different instants, both run.
    ("Europe/Berlin", "0 * * * *", at(2026, 10, 24, 23, 30), at(2026, 10, 25, 2, 30),
     [at(2026, 10, 25, 0), at(2026, 10, 25, 1), at(2026, 10, 25, 2)]),
    # New York spring-forward 2026-03-08 02:00 EST -> 03:00 EDT: 02:30 runs at 03:00 EDT.
    ("America/New_York", "30 2 * * *", at(2026, 3, 7, 12), at(2026, 3, 9, 12),
     [at(2026, 3, 8, 7, 0), at(2026, 3, 9, 6, 30)]),
    # New York fall-back 2026-11-01 02:00 EDT -> 01:00 EST: 01:30 runs once, at 01:30 EDT.
    ("America/New_York", "30 1 * * *", at(2026, 10, 31, 12), at(2026, 11, 2, 12),
     [at(2026, 11, 1, 5, 30), at(2026, 11, 2, 6, 30)]),
    # Lord Howe spring-forward 2026-10-04 02:00 +10:30 -> 02:30 +11: 02:15 runs at 02:30 +11.
    ("Australia/Lord_Howe", "15 2 * * *", at(2026, 10, 3, 0), at(2026, 10, 4, 23),
     [at(2026, 10, 3, 15, 30), at(2026, 10, 4, 15, 15)]),
    # Lord Howe fall-back 2026-04-05 02:00 +11 -> 01:30 +10:30: 01:45 runs once, the first time.
    ("Australia/Lord_Howe", "45 1 * * *", at(2026, 4, 3, 20), at(2026, 4, 5, 20),
     [at(2026, 4, 4, 14, 45), at(2026, 4, 5, 15, 15)]),
    # Every 15 minutes across that repeated half hour: each distinct instant runs once.
    ("Australia/Lord_Howe", "*/15 * * * *", at(2026, 4, 4, 14, 20), at(2026, 4, 4, 15, 20),
     [at(2026, 4, 4, 14, 30), at(2026, 4, 4, 14, 45), at(2026, 4, 4, 15, 0), at(2026, 4, 4, 15, 15)]),
]


@pytest.mark.parametrize(("tz", "cron", "start", "end", "expected"), CASES)
def test_dst_rules(tz: str, cron: str, start: int, end: int, expected: list[int]) -> None:
    assert slots(cron, tz, start, end) == expected


def test_seconds_field_comes_first() -> None:
    s = Schedule("s", "t", cron="*/20 * * * * *")
    assert due(s, at(2026, 1, 1), at(2026, 1, 1, 0, 1), 10) == [at(2026, 1, 1, 0, 0, 20), at(2026, 1, 1, 0, 0, 40),
                                                                 at(2026, 1, 1, 0, 1)]


def test_every_s_slots_are_epoch_multiples_and_due_keeps_the_latest() -> None:
    s = Schedule("e", "t", every_s=5)
    assert next_after(s, 100) == 105 and next_after(s, 104) == 105
    assert due(s, 100, 131, 3) == [120, 125, 130]
    assert due(s, 100, 131, 100) == [105, 110, 115, 120, 125, 130]
    assert due(s, 130, 134, 10) == []
    cron = Schedule("c", "t", cron="* * * * *")
    assert due(cron, at(2026, 1, 1), at(2026, 1, 1, 10), 2) == [at(2026, 1, 1, 9, 59), at(2026, 1, 1, 10)]


def test_slot_task_ids_are_deterministic_well_formed_and_distinct() -> None:
    first = slot_task_id("reports", "nightly", 1_800_000_000)
    assert first == slot_task_id("reports", "nightly", 1_800_000_000)
    assert queue_of(first) == "reports"
    others = {slot_task_id("reports", "nightly", 1_800_000_001), slot_task_id("reports", "other", 1_800_000_000)}
    assert len({first, *others}) == 3


@pytest.mark.parametrize(("kwargs", "message"), [
    ({}, "exactly one of cron and every_s"),
    ({"cron": "* * * * *", "every_s": 5}, "exactly one of cron and every_s"),
    ({"every_s": 0}, "every_s must be an integer >= 1"),
    ({"every_s": 1.5}, "every_s must be an integer >= 1"),
    ({"cron": "* * * *"}, "5 fields, or 6"),
    ({"cron": "* * * * * * *"}, "5 fields, or 6"),
    ({"cron": "61 * * * *"}, "invalid cron"),
    ({"every_s": 1, "tz": "Mars/Olympus"}, "unknown time zone"),
    ({"every_s": 1, "misfire": "twice"}, "misfire must be one of skip, once, all"),
    ({"every_s": 1, "max_catchup": 0}, "max_catchup must be an integer from 1"),
    ({"every_s": 1, "payload": {"x": object()}}, "payload must be JSON-serialisable"),
    ({"every_s": 1, "queue": "bad queue"}, "queue must be"),
])
def test_a_bad_declaration_is_one_error_naming_the_schedule(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        Registry().schedule("nightly-report", "report", **kwargs)  # type: ignore[arg-type]
    assert str(caught.value).startswith("schedule 'nightly-report': ")


def test_registry_keeps_declarations_and_refuses_a_duplicate() -> None:
    registry = Registry()
    registry.schedule("a", "t", every_s=60)
    registry.schedule("a", "t", every_s=60, queue="other")
    with pytest.raises(ValueError, match="declared twice"):
        registry.schedule("a", "t", cron="0 * * * *")
    assert [(s.name, s.queue) for s in registry.schedules] == [("a", "default"), ("a", "other")]
    definition = registry.schedules[0].definition()
    assert Schedule.from_definition(definition) == registry.schedules[0]
    assert registry.schedules[0].version() != registry.schedules[1].version()
