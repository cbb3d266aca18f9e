"""Priorities in the channel contract, on both channels (real Valkey, real Kafka-protocol broker):
what a read returns is in virtual-deadline order (Redis Streams: across the queue's backlog;
Kafka: within what the worker fetched), and a delayed task keeps its level when promoted."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from taskbus.channel import Channel, Delivery, open_channel
from taskbus.channel.kafka.group import by_deadline
from taskbus.client import Client
from taskbus.settings import Settings


@pytest.fixture(params=["redis", "kafka"])
def channel(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def consumer(settings: Settings) -> Iterator[Callable[[], Channel]]:
    """Opens the test's one consumer when called (after the test enqueued what it reads)."""
    made: list[Channel] = []

    def make() -> Channel:
        made.append(open_channel(settings, f"c-{uuid.uuid4().hex[:6]}"))
        made[-1].open()
        return made[-1]

    yield make
    for ch in made:
        ch.close(drained=False)


def enqueue(settings: Settings, n: int, **fields: object) -> list[str]:
    with Client(settings) as client:
        tasks = [{"type": "echo", "queue": settings.queues[0], **fields}] * n
        return [e.id for e in client.enqueue_many(tasks)]


def level_of(d: Delivery) -> int:
    """The level a delivery says it has: its entry on Redis Streams, its record's field on Kafka."""
    _, sep, level = d.entry.partition("@")
    return int(d.fields.get("priority", level if sep and "/" not in d.entry else 5))


def read_all(ch: Channel, n: int, timeout: float = 30) -> list[list[Delivery]]:
    batches: list[list[Delivery]] = []
    deadline = time.monotonic() + timeout
    while sum(map(len, batches)) < n and time.monotonic() < deadline:
        ch.maintain()  # as the worker's loop does each turn (Redis: it sees a queue's new levels)
        if found := ch.read(20, 200):
            batches.append(found)
    assert sum(map(len, batches)) == n, "every record read"
    return batches


def test_each_read_is_in_deadline_order(settings, consumer, channel):
    fives = enqueue(settings, 6)
    nines = enqueue(settings, 3, priority=9)
    batches = read_all(consumer(), 9)
    for batch in batches:
        levels = [level_of(d) for d in batch]
        assert levels == sorted(levels, reverse=True), "a 9 is never behind an older 5 in one read"
    ids = [d.task_id for batch in batches for d in batch]
    assert sorted(ids) == sorted(fives + nines)
    if channel == "redis":  # the whole backlog is in view: the 9s first of all
        assert ids[:3] == nines


def test_a_delayed_task_keeps_its_level(settings, consumer):
    queue = settings.queues[0]
    [task_id] = enqueue(settings, 1, priority=8, delay_s=0.2)
    ch = consumer()
    found: list[Delivery] = []
    deadline = time.monotonic() + 30
    while not found and time.monotonic() < deadline:
        ch.promote_due(queue)
        ch.maintain()
        found = [d for d in ch.read(5, 200) if d.task_id == task_id]
    assert found and level_of(found[0]) == 8


def test_kafka_order_is_by_virtual_deadline_not_level_alone():
    """A level-0 record 61 s older than a level-9 one is due first (PRIORITY_MAX_DELAY_S 60)."""
    old_zero = Delivery("q", "t/0/1", "q~" + "0" * 32, {"time_ms": "1000", "priority": "0"})
    young_nine = Delivery("q", "t/0/2", "q~" + "1" * 32, {"time_ms": "62000", "priority": "9"})
    five = Delivery("q", "t/0/3", "q~" + "2" * 32, {"time_ms": "61000"})
    assert by_deadline([young_nine, five, old_zero], 60.0) == [old_zero, young_nine, five]
    assert by_deadline([five, five], 60.0) == [five, five]
