"""Priorities on Redis Streams through real worker processes: higher levels start first, FIFO
within a level, delays and retries keep their level, a SIGKILLed worker's level entries are
reclaimed, and a flood of priority-9 work holds a priority-1 task at most
PRIORITY_MAX_DELAY_S beyond its FIFO turn (bounded starvation)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from taskbus.client import Client
from taskbus.keys import Keys
from taskbus.settings import Settings
from testkit.procs import wait_until

HANDLERS = "tests.handlers_prio"


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with Client(settings) as c:
        yield c


def notes(r: redis.Redis, key: str) -> list[str]:
    return list(r.lrange(key, 0, -1))  # type: ignore[arg-type]


def enqueue_notes(client: Client, queue: str, key: str, n: int, **fields: Any) -> list[str]:
    tasks = [{"type": "note", "queue": queue, "payload": {"key": key, "seconds": 0.02}, **fields} for _ in range(n)]
    return [e.id for e in client.enqueue_many(tasks)]


def test_levels_start_highest_first_and_fifo_within_each(settings, client, workers, r, queue):
    key = f"{queue}:notes"
    fives = enqueue_notes(client, queue, key, 8)
    ones = enqueue_notes(client, queue, key, 4, priority=1)
    nines = enqueue_notes(client, queue, key, 4, priority=9)
    workers(handlers=HANDLERS, concurrency=1)
    wait_until(lambda: len(notes(r, key)) == 16, timeout=30, message="all 16 tasks started")
    started = [n.rsplit(":", 1)[0] for n in notes(r, key)]
    assert started == nines + fives + ones, "9s before the older 5s, the 1s last; FIFO within each level"
    keys = Keys(settings.key_prefix)
    assert r.hget(keys.task(nines[0]), "priority") == "9" and r.hget(keys.task(fives[0]), "priority") is None
    assert r.smembers(keys.levels(queue)) <= {"1", "9"}


def test_delays_and_retries_keep_their_level(settings, client, workers, r, queue):
    key = f"{queue}:notes"
    backlog = enqueue_notes(client, queue, key, 60)  # about 1.2 s of work for one runner, or more
    retried = client.enqueue("note", {"key": key, "fail_first": True}, queue=queue, priority=9).id
    delayed = client.enqueue("note", {"key": key}, queue=queue, priority=9, delay_s=0.3).id
    workers(handlers=HANDLERS, concurrency=1)
    wait_until(lambda: len(notes(r, key)) == 63, timeout=40, message="every attempt started")
    order = notes(r, key)
    assert order[0] == f"{retried}:1", "the 9 goes before the older backlog"
    last_backlog = max(order.index(f"{t}:1") for t in backlog)
    assert order.index(f"{retried}:2") < last_backlog, "its retry kept level 9: it overtook the backlog"
    assert order.index(f"{delayed}:1") < last_backlog, "the delayed 9 was promoted into level 9"
    wait_until(lambda: r.hget(Keys(settings.key_prefix).task(retried), "status") == "succeeded", timeout=10)


def test_a_sigkilled_workers_level_entries_are_reclaimed(settings, client, workers, r, queue):
    key = f"{queue}:notes"
    keys = Keys(settings.key_prefix)
    task_id = client.enqueue("note", {"key": key, "hang_first": True}, queue=queue, priority=8).id
    first = workers(handlers=HANDLERS, concurrency=1)
    wait_until(lambda: notes(r, key) == [f"{task_id}:1"], timeout=20, message="the first attempt hangs", proc=first)
    first.signal(signal.SIGKILL)
    workers(handlers=HANDLERS, concurrency=1)
    wait_until(lambda: r.hget(keys.task(task_id), "status") == "succeeded", timeout=30,
               message="the second worker reclaimed the level-8 entry and ran it")
    assert notes(r, key) == [f"{task_id}:1", f"{task_id}:2"]
    stream = keys.level_stream(queue, 8)
    wait_until(lambda: r.xlen(stream) == 0, timeout=10, message="its entry acknowledged and deleted")
    assert r.xpending(stream, settings.consumer_group)["pending"] == 0


def test_a_flood_of_nines_holds_a_one_at_most_the_max_delay_beyond_its_fifo_turn(settings, client, workers, r, queue):
    max_delay_s = 2.0
    key = f"{queue}:notes"
    keys = Keys(settings.key_prefix)
    for _ in range(2):
        workers(handlers=HANDLERS, concurrency=2, priority_max_delay_s=max_delay_s)
    stop = threading.Event()
    nines: list[str] = []

    def flood() -> None:  # keep about 40 nines queued: the workers stay saturated
        while not stop.is_set():
            if r.xlen(keys.level_stream(queue, 9)) < 40:
                nines.extend(enqueue_notes(client, queue, key, 20, priority=9))
            stop.wait(0.02)

    feeder = threading.Thread(target=flood, daemon=True)
    feeder.start()
    try:
        wait_until(lambda: len(notes(r, key)) >= 40, timeout=20, message="the flood is being served")
        one = client.enqueue("note", {"key": key}, queue=queue, priority=1).id
        wait_until(lambda: r.hget(keys.task(one), "started_ms"), timeout=20, message="the priority-1 task starts")
    finally:
        stop.set()
        feeder.join(10)
    task = r.hgetall(keys.task(one))
    created, started = int(task["created_ms"]), int(task["started_ms"])
    flood_tasks = [r.hmget(keys.task(t), "created_ms", "started_ms") for t in list(nines)]
    older = [int(s) for c, s in flood_tasks if c and int(c) < created and s]
    younger_before = [s for c, s in flood_tasks if c and int(c) > created and s and int(s) < started]
    fifo_turn = max(older, default=created)  # without priorities it starts once every older task started
    assert younger_before, "the 9s that arrived after the 1 overtook it (priorities were in effect)"
    print(f"priority-1 wait {started - created} ms, {started - fifo_turn} ms past its FIFO turn, "
          f"overtaken by {len(younger_before)} younger 9s")
    assert started - fifo_turn <= (max_delay_s + 1.0) * 1000, (started - created, started - fifo_turn)
