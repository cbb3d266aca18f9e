"""Schedules against a real Valkey and real worker processes (`tests/handlers_sched.py`):
exactly one run per slot while workers race, die, stall and disagree on the time by ±30 s;
the misfire policies after every worker was down; overlap=False; Kafka; concurrent upserts of
one schedule; the operator commands and console routes."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import click.testing
import pytest
import redis

from taskbus import cli_schedules
from taskbus.errors import NotFound
from taskbus.keys import Keys
from taskbus.schedules.model import Schedule
from taskbus.schedules.slots import due, slot_task_id
from taskbus.schedules.store import ScheduleStore
from taskbus.settings import Settings
from testkit.env import setting_vars
from testkit.procs import Proc, spawn, wait_until
from tests.http.conftest import build_app, close

SCHED = "tests.handlers_sched"


@pytest.fixture
def store(settings: Settings) -> Iterator[ScheduleStore]:
    s = ScheduleStore(settings)
    yield s
    s.close()


def server_s(r: redis.Redis) -> float:
    seconds, micros = r.time()
    return seconds + micros / 1e6


def last_s(r: redis.Redis, keys: Keys, queue: str, name: str) -> int:
    return int(r.hget(keys.schedule(queue, name), "last_s") or 0)


def task(r: redis.Redis, keys: Keys, queue: str, name: str, slot: int) -> dict[str, str]:
    return r.hgetall(keys.task(slot_task_id(queue, name, slot)))  # type: ignore[return-value]


def fired(r: redis.Redis, keys: Keys, queue: str, name: str, after: int, until: int) -> list[int]:
    """The slots in (after, until] whose task exists."""
    return [s for s in range(after + 1, until + 1) if r.exists(keys.task(slot_task_id(queue, name, s)))]


def first_slot(r: redis.Redis, keys: Keys, queue: str, name: str, proc: Proc) -> int:
    """The schedule's first fired slot (its `last_s` starts at its creation, not at a slot)."""
    wait_until(lambda: r.hget(keys.schedule(queue, name), "last_task"), timeout=20, message=f"{name} fired", proc=proc)
    return last_s(r, keys, queue, name)


@pytest.fixture
def skewed(settings: Settings, tmp_path: Path) -> Iterator[Callable[[str], Proc]]:
    """`skewed("+30s")`: a worker whose wall clock is off by that much (libfaketime) and which
    fires the schedules of tests/handlers_sched.py but runs none of their tasks (libfaketime
    makes `time.sleep` fail; with a faked monotonic clock too, timed `Event.wait` hangs, so
    that one stays true, as on a skewed host). Killed after the test."""
    started: list[Proc] = []

    def start(offset: str) -> Proc:
        proc = spawn("worker", dataclasses.replace(settings, handlers=SCHED), tmp_path,
                     wrapper=("faketime", "-f", offset), FAKETIME_DONT_FAKE_MONOTONIC="1", SCHEDULES_ONLY="1")
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def test_racing_workers_fire_each_slot_once_through_a_kill_a_stall_and_skewed_clocks(
    workers: Callable[..., Proc], skewed: Callable[[str], Proc], r: redis.Redis, keys: Keys, queue: str
) -> None:
    # 30 s ahead (then SIGKILLed), on time (then SIGSTOPped), 30 s behind (alive throughout):
    # the slots follow Redis's clock, whatever the hosts' clocks say.
    procs = [skewed("+30s"), workers(handlers=SCHED), skewed("-30s")]
    start = first_slot(r, keys, queue, "race", procs[0])
    wait_until(lambda: last_s(r, keys, queue, "race") >= start + 3, timeout=10, message="3 slots")
    procs[0].kill()
    wait_until(lambda: last_s(r, keys, queue, "race") >= start + 5, timeout=10, message="slots after the kill")
    procs[1].signal(signal.SIGSTOP)  # for 4 slots: past its 2 s lease and the 3 s scheduler heartbeat
    try:
        wait_until(lambda: last_s(r, keys, queue, "race") >= start + 9, timeout=10, message="slots during the stall")
    finally:
        procs[1].signal(signal.SIGCONT)
    end = wait_until(lambda: (n := last_s(r, keys, queue, "race")) >= start + 12 and n, timeout=10, message="12 slots")
    slots = range(start, end + 1)
    ids = [slot_task_id(queue, "race", s) for s in slots]
    runs = f"{queue}:runs"
    wait_until(lambda: all(r.hget(runs, i) for i in ids), timeout=20, message="every slot's task ran")
    # each slot fired once (one task, its id fixed by the slot) and that task ran once per attempt:
    # only an attempt in flight on the SIGKILLed or SIGSTOPped worker is run again (at-least-once)
    executions = [int(r.hget(runs, i) or 0) for i in ids]
    attempts = [int(r.hget(keys.task(i), "attempts") or 0) for i in ids]
    assert all(1 <= e <= a for e, a in zip(executions, attempts)), (executions, attempts)
    assert all(e == 1 for e, a in zip(executions, attempts) if a == 1), (executions, attempts)
    assert sum(1 for a in attempts if a > 1) <= 2, attempts
    statuses = {r.hget(keys.task(i), "status") for i in ids}
    assert statuses <= {"succeeded", "running", "queued"} and "succeeded" in statuses
    assert fired(r, keys, queue, "race", start - 30, start - 1) == []  # nothing before the schedule existed
    assert r.hget(keys.schedule(queue, "race"), "missed_ms") is None  # a worker was always looking
    assert_no_overlap(r, keys, queue, start, end)


def assert_no_overlap(r: redis.Redis, keys: Keys, queue: str, start: int, end: int) -> None:
    """`slow` (overlap=False, a 2.2 s task every 1 s slot) skipped each slot whose previous run
    was unfinished, across the racing workers: no run was created before the previous one ended."""
    runs = [t for t in (task(r, keys, queue, "slow", s) for s in range(start, end + 1)) if t]
    assert 2 <= len(runs) <= (end - start) // 2
    for previous, following in zip(runs, runs[1:]):
        assert previous.get("finished_ms") and int(following["created_ms"]) >= int(previous["finished_ms"])


def test_after_every_worker_was_down_skip_once_and_all_do_what_they_say(
    workers: Callable[..., Proc], r: redis.Redis, keys: Keys, queue: str
) -> None:
    names = ("skip", "once", "all3")
    first = workers(handlers=SCHED)
    wait_until(lambda: all(last_s(r, keys, queue, n) for n in names), timeout=20, message="first slots", proc=first)
    begun = {n: last_s(r, keys, queue, n) for n in names}
    wait_until(lambda: all(last_s(r, keys, queue, n) >= begun[n] + 2 for n in names), timeout=10, message="2 slots")
    first.kill()
    before = {n: last_s(r, keys, queue, n) for n in names}
    wait_until(lambda: server_s(r) >= max(before.values()) + 6.2, timeout=10, message="6 slots of downtime")
    assert not r.exists(keys.schedulers_seen(queue))
    again = workers(handlers=SCHED)
    wait_until(lambda: all(r.hget(keys.schedule(queue, n), "missed_to_s") for n in names), timeout=20,
               message="the catch-up", proc=again)
    missed = {n: r.hmget(keys.schedule(queue, n), "missed_from_s", "missed_to_s") for n in names}
    for n in names:
        lo, hi = int(missed[n][0]), int(missed[n][1])
        assert lo == before[n] and hi - lo >= 6, (n, lo, hi)
    wait_until(lambda: all(last_s(r, keys, queue, n) >= int(missed[n][1]) + 2 for n in names), timeout=10,
               message="slots after the restart")
    for n in names:
        lo, hi = int(missed[n][0]), int(missed[n][1])
        caught_up = fired(r, keys, queue, n, lo, hi)
        assert caught_up == {"skip": [], "once": [hi], "all3": [hi - 2, hi - 1, hi]}[n], n
        assert fired(r, keys, queue, n, hi, hi + 2) == [hi + 1, hi + 2], n  # then on time again


def test_concurrent_upserts_leave_one_definition(store: ScheduleStore, r: redis.Redis, keys: Keys, queue: str,
                                                 settings: Settings) -> None:
    a = Schedule("nightly", "record", cron="0 2 * * *", queue=queue, tz="Europe/Berlin")
    b = Schedule("nightly", "record", every_s=300, queue=queue)
    stores = [ScheduleStore(settings) for _ in range(10)]
    try:
        def upsert(i: int, which: list[Schedule]) -> str:
            return stores[i % 10].sync([which[i % len(which)]])[0][0]

        with concurrent.futures.ThreadPoolExecutor(25) as pool:
            same = list(pool.map(lambda i: upsert(i, [a]), range(50)))
        assert sorted(same) == ["created"] + ["same"] * 49
        assert r.hget(keys.schedule(queue, "nightly"), "generation") == "1"
        changed_at = int(server_s(r))
        with concurrent.futures.ThreadPoolExecutor(25) as pool:
            mixed = list(pool.map(lambda i: upsert(i, [a, b]), range(50)))
    finally:
        for s in stores:
            s.close()
    stored = r.hgetall(keys.schedule(queue, "nightly"))
    winner = Schedule.from_definition(stored["def"])
    assert winner in (a, b) and stored["version"] == winner.version()
    assert int(stored["generation"]) == 1 + mixed.count("changed")
    assert "changed" in mixed and int(stored["last_s"]) >= changed_at  # a change starts from the next slot
    assert r.smembers(keys.schedules(queue)) == {"nightly"}
    assert [(s.schedule, s.version) for s in store.load([queue])] == [(winner, winner.version())]
    store.delete(queue, "nightly")
    assert store.load([queue]) == []
    with pytest.raises(NotFound, match="no schedule named 'nightly'"):
        store.delete(queue, "nightly")
    assert store.sync([a]) == [("created", 1)]
    assert [s.schedule for s in store.load([queue])] == [a]


def taskbus_cli(settings: Settings, *args: str) -> click.testing.Result:
    """`taskbus schedules ARGS --queue <queue> --json`, in process, configured by environment only."""
    runner = click.testing.CliRunner()
    return runner.invoke(cli_schedules.schedules, [*args, "--queue", settings.queues[0], "--json"],
                         env=setting_vars(settings))


def test_operators_list_pause_resume_trigger_and_delete(store: ScheduleStore, r: redis.Redis, keys: Keys,
                                                         queue: str, settings: Settings) -> None:
    store.sync([Schedule("tick", "record", every_s=1, queue=queue, payload={"key": f"{queue}:runs"})])
    listed = taskbus_cli(settings, "list")
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)["schedules"]
    assert [(s["name"], s["every_s"], s["paused"]) for s in rows] == [("tick", 1, False)]
    assert taskbus_cli(settings, "pause", "tick").exit_code == 0
    stored = store.load([queue])[0]
    assert stored.paused
    wait_until(lambda: server_s(r) >= stored.last_s + 2, message="2 slots")
    paused = store.fire(stored, due(stored.schedule, stored.last_s, int(server_s(r)), 3))
    assert paused.ids == [] and paused.last_s > stored.last_s  # the slots passed unfired
    assert taskbus_cli(settings, "resume", "tick").exit_code == 0
    stored = store.load([queue])[0]
    wait_until(lambda: server_s(r) >= stored.last_s + 1, message="the next slot")
    resumed = store.fire(stored, due(stored.schedule, stored.last_s, int(server_s(r)), 3))
    assert resumed.ids == [slot_task_id(queue, "tick", resumed.last_s)]
    triggered = taskbus_cli(settings, "trigger", "tick")
    assert triggered.exit_code == 0, triggered.output
    manual = json.loads(triggered.stdout)["result"]
    assert r.hget(keys.task(manual), "type") == "record" and manual not in resumed.ids
    assert taskbus_cli(settings, "delete", "tick").exit_code == 0
    missing = taskbus_cli(settings, "delete", "tick")
    assert missing.exit_code == 1 and "no schedule named 'tick'" in missing.stderr
    assert store.load([queue]) == []


@pytest.mark.parametrize("channel", ["kafka"])
def test_a_slot_fires_on_the_kafka_channel_too(workers: Callable[..., Proc], r: redis.Redis, keys: Keys,
                                               queue: str) -> None:
    proc = workers(handlers=SCHED)
    start = first_slot(r, keys, queue, "race", proc)
    task_id = slot_task_id(queue, "race", start)
    wait_until(lambda: r.hget(f"{queue}:runs", task_id), timeout=15, message="the slot's task ran", proc=proc)
    # the handler counted its run; the worker writes the outcome just after
    wait_until(lambda: r.hget(keys.task(task_id), "status") == "succeeded", timeout=15,
               message="the slot's task succeeded", proc=proc)


def test_the_console_lists_pauses_resumes_triggers_and_deletes(store: ScheduleStore, r: redis.Redis, keys: Keys,
                                                                queue: str, settings: Settings) -> None:
    store.sync([Schedule("tick", "record", every_s=60, queue=queue, payload={"key": f"{queue}:runs"})])
    built = build_app("console", dataclasses.replace(settings, admin_keys=(("ops", "k"),)), "wsgi", ADMIN_KEYS="ops:k")
    try:
        http = built.app.test_client()
        auth = {"Authorization": "Bearer k"}
        base = f"/api/queues/{queue}/schedules"
        listed = http.get(base, headers=auth).get_json()["schedules"]
        assert [(s["name"], s["every_s"], s["paused"]) for s in listed] == [("tick", 60, False)]
        assert http.post(f"{base}/tick:pause", headers=auth).get_json()["paused"] is True
        assert r.hget(keys.schedule(queue, "tick"), "paused")
        assert http.post(f"{base}/tick:resume", headers=auth).get_json()["paused"] is False
        triggered = http.post(f"{base}/tick:trigger", headers=auth).get_json()
        assert triggered["status"] == "queued" and r.hget(keys.task(triggered["id"]), "type") == "record"
        assert http.post(f"{base}/tick:delete", headers=auth).get_json() == {"deleted": "tick"}
        missing = http.post(f"{base}/tick:delete", headers=auth)
        assert missing.status_code == 404 and "no schedule named 'tick'" in missing.get_json()["error"]["message"]
        assert http.post(f"{base}/tick:pause").status_code == 401
    finally:
        close(built)
