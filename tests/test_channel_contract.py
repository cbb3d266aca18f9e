"""The channel contract, in process, run on both channels with the same expectations: what the
worker engine relies on from `Channel` (Redis Streams) and `KafkaChannel`."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer

from taskbus.channel import Channel, Delivery, Job
from taskbus.kafka_channel import KafkaChannel
from taskbus.settings import Settings
from taskbus.store import Store
from taskbus.task import parse_spec
from tests.test_kafka import read_topic

AnyChannel = Channel | KafkaChannel


@pytest.fixture(params=["redis", "kafka"])
def channel(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(settings: Settings) -> Iterator[Any]:
    made: list[AnyChannel] = []

    def make_channel() -> AnyChannel:
        name = f"c-{uuid.uuid4().hex[:6]}"
        ch: AnyChannel = KafkaChannel(settings, name) if settings.channel == "kafka" else Channel(settings, name)
        ch.ensure_groups()
        made.append(ch)
        return ch

    yield make_channel
    for ch in made:
        try:
            ch.close()
        except Exception:  # noqa: BLE001 - a test may have closed it already
            pass


def enqueue(settings: Settings, n: int, type_: str = "echo") -> list[str]:
    store = Store(settings)
    spec = parse_spec({"type": type_, "queue": settings.queues[0], "payload": {}})
    return [store.enqueue(spec)[0] for _ in range(n)]


def deliveries(ch: AnyChannel, queue: str) -> list[Delivery]:
    return ch.read(10, 100) + ch.reclaim(queue, 10)


def start_one(ch: AnyChannel, queue: str, task_id: str, timeout: float = 20) -> Job:
    """Read (or take over) until `ch` starts `task_id`; returns the started attempt."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [d for d in deliveries(ch, queue) if d.task_id == task_id]
        for d, verdict in ch.start(queue, found) if found else []:
            if verdict[0] == "run":
                _, type_, payload, attempt, max_attempts, timeout_s = verdict
                return Job(queue, d.entry, task_id, type_, payload, int(attempt), int(max_attempts), float(timeout_s))
    raise AssertionError(f"{task_id} was not started within {timeout} s")


def test_tasks_queued_before_any_consumer_each_start_exactly_once(settings, make, r):
    queue = settings.queues[0]
    ids = enqueue(settings, 20)
    consumers = [make(), make()]
    runs: Counter[str] = Counter()
    deadline = time.monotonic() + 30
    while len(runs) < len(ids) and time.monotonic() < deadline:
        for ch in consumers:
            found = [d for d in deliveries(ch, queue) if d.task_id]
            started = [(d, v) for d, v in ch.start(queue, found)] if found else []
            jobs = []
            for d, verdict in started:
                if verdict[0] == "run":
                    runs[d.task_id or ""] += 1
                    jobs.append((Job(queue, d.entry, d.task_id or "", "echo", {}, int(verdict[3]), 5, 30.0),
                                 "succeeded", b"{}", 0))
            if jobs:
                assert ch.finish(queue, jobs) == ["succeeded"] * len(jobs)
    assert sorted(runs) == sorted(ids), "every task started, none lost"
    assert set(runs.values()) == {1}, "none started twice"
    assert {r.hget(f"tb:{{{queue}}}:task:{i.split('~')[1]}", "status") for i in ids} == {"succeeded"}


def test_a_handed_back_task_is_taken_over_and_the_old_attempt_is_fenced_off(settings, make):
    queue = settings.queues[0]
    (task_id,) = enqueue(settings, 1)
    first = make()
    old = start_one(first, queue, task_id)
    assert old.attempt == 1
    assert first.heartbeat(queue, [old]) == [], "the holder keeps its lease"
    first.release(queue, [old])
    first.close()  # a worker stopping after its grace period
    second = make()
    new = start_one(second, queue, task_id)
    assert new.attempt == 2
    assert first.heartbeat(queue, [old]) == [old.entry], "the old holder learns it lost the task"
    assert second.heartbeat(queue, [new]) == []
    assert first.finish(queue, [(old, "succeeded", b'"late"', 0)]) == [None], "a late write is refused"
    assert second.finish(queue, [(new, "succeeded", b'"fresh"', 0)]) == ["succeeded"]
    assert second.finish(queue, [(new, "succeeded", b'"fresh"', 0)]) == ["succeeded"], "a retried write is idempotent"


def test_a_retry_is_scheduled_then_delivered_again_as_the_next_attempt(settings, make, r):
    queue = settings.queues[0]
    (task_id,) = enqueue(settings, 1)
    ch = make()
    job = start_one(ch, queue, task_id)
    assert ch.finish(queue, [(job, "retry", b'{"type":"E"}', 0)]) == ["scheduled"]
    assert r.hget(f"tb:{{{queue}}}:task:{task_id.split('~')[1]}", "status") == "scheduled"
    assert ch.promote_due(queue) in (-1, 0)
    again = start_one(ch, queue, task_id)
    assert again.attempt == 2


def test_a_malformed_entry_is_dead_lettered_and_delivery_goes_on(settings, make, r, request):
    queue = settings.queues[0]
    (before,) = enqueue(settings, 1)  # creates the stream or topics
    if settings.channel == "kafka":
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
        producer.produce(f"taskbus.{queue}", value=b"garbage")
        assert producer.flush(10) == 0
    else:
        r.xadd(f"tb:{{{queue}}}:stream", {"id": "garbage"})
    (after,) = enqueue(settings, 1)
    ch = make()
    seen: set[str | None] = set()
    deadline = time.monotonic() + 20
    while not {None, before, after} <= seen and time.monotonic() < deadline:
        for d in deliveries(ch, queue):
            seen.add(d.task_id)
            if d.task_id is None:
                ch.drop(d, "no task id")
    assert {None, before, after} <= seen, "the malformed entry did not stop the ones after it"
    if settings.channel == "kafka":
        dead = read_topic(request.getfixturevalue("kafka"), f"taskbus.{queue}.dead", expected=1)
        assert [(d["error"]["type"], d["record"]["value"]) for d in dead] == [("MalformedRecord", "garbage")]
    else:
        dead = r.xrange(f"tb:{{{queue}}}:dead")
        assert len(dead) == 1 and "MalformedEntry" in dead[0][1]["error"]
