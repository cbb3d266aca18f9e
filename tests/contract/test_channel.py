"""The channel contract, in process, run on both channels with the same expectations: what the
worker engine relies on from a `taskbus.channel.Channel` (Redis Streams and Kafka)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
import redis
from confluent_kafka import Producer

from taskbus.channel import Channel, Delivery, Job, Outcome, Run, open_channel
from taskbus.channel.kafka.client import dead_topic, topic
from taskbus.enqueue import Enqueuer
from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.state.scripts import Scripts
from taskbus.task import parse_spec
from testkit.client import read_topic

Make = Callable[[], Channel]


@pytest.fixture(params=["redis", "kafka"])
def channel(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make(settings: Settings) -> Iterator[Callable[..., Channel]]:
    made: list[Channel] = []

    def make_channel(settings: Settings = settings) -> Channel:
        ch = open_channel(settings, f"c-{uuid.uuid4().hex[:6]}")
        ch.open()
        made.append(ch)
        return ch

    yield make_channel
    for ch in made:
        try:
            ch.close(drained=False)
        except Exception:  # noqa: BLE001 - a test may have closed it already
            pass


def enqueue(settings: Settings, n: int, queue: str | None = None, **fields: object) -> list[str]:
    enqueuer = Enqueuer(settings)
    spec = parse_spec({"type": "echo", "queue": queue or settings.queues[0], "payload": {}, **fields})
    return [enqueuer.enqueue(spec)[0] for _ in range(n)]


def deliveries(ch: Channel, queue: str) -> list[Delivery]:
    return ch.read(10, 100) + ch.reclaim(queue, 10, ())


def start_one(ch: Channel, queue: str, task_id: str, timeout: float = 20) -> Job:
    """Read (or take over) until `ch` starts `task_id`; returns the started attempt."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [d for d in deliveries(ch, queue) if d.task_id == task_id]
        for verdict in ch.start(queue, found) if found else []:
            if isinstance(verdict, Run):
                return verdict.job
    raise AssertionError(f"{task_id} was not started within {timeout} s")


def run_all(ch: Channel, queues: tuple[str, ...], expected: set[str], timeout: float = 30) -> Counter[str]:
    """Turn the channel as the worker's loop does (promote, upkeep, read, reclaim, start, finish)
    until every task of `expected` ran; returns how often each task started."""
    runs: Counter[str] = Counter()
    deadline = time.monotonic() + timeout
    while not expected <= set(runs) and time.monotonic() < deadline:
        for queue in queues:
            ch.promote_due(queue)
        ch.maintain()
        found = ch.read(10, 100) + [d for q in queues for d in ch.reclaim(q, 10, ())]
        for queue in queues:
            mine = [d for d in found if d.queue == queue and d.task_id]
            jobs = [v.job for v in (ch.start(queue, mine) if mine else []) if isinstance(v, Run)]
            runs.update(job.task_id for job in jobs)
            if jobs:
                assert ch.finish(queue, [Outcome(job, "succeeded", b"{}") for job in jobs]) == ["succeeded"] * len(jobs)
    return runs


def test_tasks_queued_before_any_consumer_each_start_exactly_once(settings, make, r):
    queue = settings.queues[0]
    ids = enqueue(settings, 20)
    consumers = [make(), make()]
    runs: Counter[str] = Counter()
    deadline = time.monotonic() + 30
    while len(runs) < len(ids) and time.monotonic() < deadline:
        for ch in consumers:
            found = [d for d in deliveries(ch, queue) if d.task_id]
            jobs = [v.job for v in (ch.start(queue, found) if found else []) if isinstance(v, Run)]
            runs.update(job.task_id for job in jobs)
            if jobs:
                assert ch.finish(queue, [Outcome(job, "succeeded", b"{}") for job in jobs]) == ["succeeded"] * len(jobs)
    assert sorted(runs) == sorted(ids), "every task started, none lost"
    assert set(runs.values()) == {1}, "none started twice"
    keys = Keys(settings.key_prefix)
    assert {r.hget(keys.task(i), "status") for i in ids} == {"succeeded"}


def test_every_queue_of_a_consumer_is_served_with_its_delays_and_its_outbox(settings, make, r):
    """A consumer of two queues gets the immediate and the delayed tasks of both, and (Kafka) the
    tasks stranded in each queue's outbox by an enqueue that died before producing."""
    queues = (settings.queues[0], settings.queues[0] + "-b")
    settings = dataclasses.replace(settings, queues=queues)
    expected = {i for q in queues for i in enqueue(settings, 2, q) + enqueue(settings, 1, q, delay_s=0.2)}
    if settings.channel == "kafka":
        expected |= {strand_in_outbox(settings, q, r) for q in queues}
    runs = run_all(make(settings), queues, expected)
    assert set(runs) == expected, f"not run: {sorted(expected - set(runs))}"
    assert set(runs.values()) == {1}


def strand_in_outbox(settings: Settings, queue: str, r: redis.Redis) -> str:
    """The state an enqueue leaves when it dies after recording a task and before producing it."""
    keys, task_id = Keys(settings.key_prefix), f"{queue}~{uuid.uuid4().hex}"
    Scripts(r).enqueue(
        keys=[keys.task(task_id), keys.outbox(queue), keys.delayed(queue), keys.task(task_id), keys.levels(queue)],
        args=["outbox", task_id, "echo", queue, "{}", 3, "30.0", 0, 3600, "", "", "", ""],
    )
    return task_id


def test_a_handed_back_task_is_taken_over_and_the_old_attempt_is_fenced_off(settings, make):
    queue = settings.queues[0]
    (task_id,) = enqueue(settings, 1)
    first = make()
    old = start_one(first, queue, task_id)
    assert old.attempt == 1
    assert first.heartbeat(queue, [old]) == [], "the holder keeps its lease"
    first.release(queue, [old])
    first.close(drained=False)  # a worker stopping after its grace period
    second = make()
    new = start_one(second, queue, task_id)
    assert new.attempt == 2
    assert first.heartbeat(queue, [old]) == [old.entry], "the old holder learns it lost the task"
    assert second.heartbeat(queue, [new]) == []
    assert first.finish(queue, [Outcome(old, "succeeded", b'"late"')]) == [None], "a late write is refused"
    assert second.finish(queue, [Outcome(new, "succeeded", b'"fresh"')]) == ["succeeded"]
    assert second.finish(queue, [Outcome(new, "succeeded", b'"fresh"')]) == ["succeeded"], "a retry is idempotent"


def test_a_retry_is_scheduled_then_delivered_again_as_the_next_attempt(settings, make, r):
    queue = settings.queues[0]
    (task_id,) = enqueue(settings, 1)
    ch = make()
    job = start_one(ch, queue, task_id)
    assert ch.finish(queue, [Outcome(job, "retry", b'{"type":"E"}')]) == ["scheduled"]
    assert r.hget(Keys(settings.key_prefix).task(task_id), "status") == "scheduled"
    assert ch.promote_due(queue) in (-1, 0)
    again = start_one(ch, queue, task_id)
    assert again.attempt == 2


def test_a_malformed_entry_is_dead_lettered_and_delivery_goes_on(settings, make, r, request):
    queue = settings.queues[0]
    keys = Keys(settings.key_prefix)
    (before,) = enqueue(settings, 1)  # creates the stream or topics
    if settings.channel == "kafka":
        producer = Producer({"bootstrap.servers": settings.kafka_bootstrap_servers})
        producer.produce(topic(settings, queue), value=b"garbage")
        assert producer.flush(10) == 0
    else:
        r.xadd(keys.stream(queue), {"id": "garbage"})
    (after,) = enqueue(settings, 1)
    ch = make()
    seen: set[str | None] = set()
    deadline = time.monotonic() + 20
    while not {None, before, after} <= seen and time.monotonic() < deadline:
        for d in deliveries(ch, queue):
            seen.add(d.task_id)
            if d.task_id is None:
                ch.reject(d, "no task id")
    assert {None, before, after} <= seen, "the malformed entry did not stop the ones after it"
    if settings.channel == "kafka":
        dead = read_topic(request.getfixturevalue("kafka"), dead_topic(settings, queue), expected=1)
        assert [(d["error"]["type"], d["record"]["value"]) for d in dead] == [("MalformedRecord", "garbage")]
    else:
        dead = r.xrange(keys.dead(queue))
        assert len(dead) == 1 and "MalformedEntry" in dead[0][1]["error"]
        assert dead[0][1]["entry"] == '{"id":"garbage"}', "the raw entry is kept for inspection"
