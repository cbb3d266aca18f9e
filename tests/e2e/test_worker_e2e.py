"""End to end through real processes: HTTP enqueue -> worker process -> HTTP status, on each
channel (Redis Streams, Kafka): the same tests, the same expectations."""

from __future__ import annotations

import json
import signal
import time
import uuid

import pytest
import redis

from taskbus.keys import Keys
from testkit.client import enqueue, executions, finished, status
from testkit.procs import wait_until


@pytest.fixture(params=["redis", "kafka"])
def channel(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def stream_len(r: redis.Redis, keys: Keys, queue: str) -> int:
    return int(r.xlen(keys.stream(queue)))


def pending(r: redis.Redis, keys: Keys, queue: str) -> int:
    return int(r.xpending(keys.stream(queue), "taskbus")["pending"])


def drained(r: redis.Redis, keys: Keys, queue: str, channel: str) -> bool:
    """Nothing left to deliver: Redis, no stream entry pending or kept; Kafka, nothing waiting
    in the outbox (offsets are checked by the Kafka tests)."""
    if channel == "kafka":
        return int(r.zcard(keys.outbox(queue))) == 0
    return pending(r, keys, queue) == 0 and stream_len(r, keys, queue) == 0


def test_enqueue_then_long_poll_returns_result(http, functions, queue, workers):
    workers()
    task_id = enqueue(http, functions, queue, "echo", {"hello": "world"})
    task = finished(http, functions, task_id)
    assert task["status"] == "succeeded"
    assert task["result"] == {"hello": "world"}
    assert task["attempts"] == 1
    assert task["started_at"] <= task["finished_at"]


def test_long_poll_wakes_when_task_finishes(http, functions, queue, workers):
    workers()
    task_id = enqueue(http, functions, queue, "sleep", {"seconds": 1.0})
    began = time.monotonic()
    task = status(http, functions, task_id, wait=30)
    elapsed = time.monotonic() - began
    assert task["status"] == "succeeded"
    assert elapsed < 10, "the long-poll must answer when the task finishes, not at the 30 s timeout"


def test_task_enqueued_with_no_worker_runs_when_one_starts(http, functions, queue, workers, r, keys, channel):
    ids = [enqueue(http, functions, queue, "echo", {"n": n}) for n in range(5)]
    assert all(status(http, functions, i)["status"] == "queued" for i in ids)
    workers()
    assert [finished(http, functions, i)["result"] for i in ids] == [{"n": n} for n in range(5)]
    wait_until(lambda: drained(r, keys, queue, channel), message="acknowledged entries deleted")


def test_retry_with_backoff_then_success(http, functions, queue, workers):
    workers()
    task_id = enqueue(http, functions, queue, "fail", {"succeed_on_attempt": 3})
    task = finished(http, functions, task_id)
    assert task["status"] == "succeeded"
    assert task["attempts"] == 3
    assert task["result"] == {"succeeded_on_attempt": 3}
    assert task["error"] is None


def test_dead_letter_after_max_attempts(http, functions, queue, workers, r, keys):
    workers()
    task_id = enqueue(http, functions, queue, "fail", {}, max_attempts=2)
    task = finished(http, functions, task_id)
    assert task["status"] == "failed"
    assert task["attempts"] == 2
    assert task["error"]["type"] == "RuntimeError"
    assert "failing on purpose" in task["error"]["message"]
    assert "Traceback" in task["error"]["traceback"]
    dead = r.xrange(keys.dead(queue))
    assert [fields["id"] for _, fields in dead] == [task_id]


@pytest.mark.parametrize("type_, error", [("garbage", "UnencodableResult"), ("too_big", "ResultTooLarge"),
                                          ("permanent", "PermanentError")])
def test_a_result_that_cannot_be_stored_or_a_permanent_error_fails_at_once(http, functions, queue, workers, r,
                                                                           keys, type_, error):
    """Retrying would repeat the handler's side effects (or cannot help): one attempt of five."""
    workers()
    key = f"runs-{uuid.uuid4().hex}"
    bad = enqueue(http, functions, queue, type_, {"key": key}, max_attempts=5)
    good = enqueue(http, functions, queue, "echo", {"ok": True})
    task = finished(http, functions, bad)
    assert (task["status"], task["attempts"], task["error"]["type"]) == ("failed", 1, error)
    assert type_ == "garbage" or executions(r, key) == {bad: 1}
    assert [fields["id"] for _, fields in r.xrange(keys.dead(queue))] == [bad], "dead-lettered"
    assert finished(http, functions, good)["result"] == {"ok": True}


def test_a_type_no_worker_has_waits_queued_then_fails_without_an_attempt(http, functions, queue, workers, r, keys):
    worker = workers(unknown_type_grace_s=3.0)
    bad = enqueue(http, functions, queue, "nosuchtype", {}, max_attempts=2)
    good = enqueue(http, functions, queue, "echo", {"ok": True})
    assert finished(http, functions, good)["result"] == {"ok": True}
    assert status(http, functions, bad)["status"] == "queued", "waiting for a worker with the handler"
    task = finished(http, functions, bad)
    assert (task["status"], task["attempts"], task["error"]["type"]) == ("failed", 0, "UnknownTaskType")
    assert [fields["id"] for _, fields in r.xrange(keys.dead(queue))] == [bad]
    assert "left for a worker that has one" in worker.output()


def test_handler_defaults_apply_when_the_request_gives_none(http, functions, queue, workers):
    workers()
    defaulted = finished(http, functions, enqueue(http, functions, queue, "flaky3", {}))
    assert (defaulted["status"], defaulted["attempts"], defaulted["max_attempts"]) == ("failed", 3, 3)
    given = finished(http, functions, enqueue(http, functions, queue, "flaky3", {}, max_attempts=1))
    assert (given["attempts"], given["max_attempts"]) == (1, 1), "the request's own value wins"


def test_failed_attempts_log_a_warning_and_the_final_failure_an_error(http, functions, queue, workers):
    worker = workers()
    task = finished(http, functions, enqueue(http, functions, queue, "flaky3", {}, max_attempts=2))
    assert task["status"] == "failed"
    wait_until(lambda: '"task failed"' in worker.output(), message="the outcome logged")  # logged after it is written
    lines = [json.loads(line) for line in worker.output().splitlines() if task["id"] in line]
    retried = [x for x in lines if x["message"] == "task attempt failed; retrying"]
    final = [x for x in lines if x["message"] == "task failed"]
    assert [(x["severity"], x["error_type"]) for x in retried] == [("WARNING", "RuntimeError")]
    assert [(x["severity"], x["error_type"], x["error"]) for x in final] == [
        ("ERROR", "RuntimeError", "flaky attempt 2 of 2")]


def test_a_rolling_deploy_never_fails_a_task_nor_spends_an_attempt_on_a_worker_without_its_type(
        http, functions, queue, workers, r, keys):
    """Two workers on one queue, one of them an older release without the `record` type."""
    old = workers(handlers="tests.handlers_v1")
    workers()
    wait_until(lambda: r.hlen(keys.workers(queue)) == 2, message="both workers advertised")
    key = f"runs-{uuid.uuid4().hex}"
    ids = [enqueue(http, functions, queue, "record", {"key": key}) for _ in range(60)]
    ids += [enqueue(http, functions, queue, "echo", {"n": n}) for n in range(20)]
    tasks = [finished(http, functions, task_id, timeout=60) for task_id in ids]
    assert {t["status"] for t in tasks} == {"succeeded"}
    assert {t["attempts"] for t in tasks} == {1}, "no attempt spent where the handler was missing"
    assert executions(r, key) == {task_id: 1 for task_id in ids[:60]}
    assert "left for a worker that has one" in old.output(), "the old worker did see some and passed them on"
    advertised = {name: json.loads(value)["handlers"] for name, value in r.hgetall(keys.workers(queue)).items()}
    assert sorted("record" in h["exact"] for h in advertised.values()) == [False, True]
    assert ["echo"] in [sorted(h["exact"]) for h in advertised.values()]


def test_prefix_handler_takes_types_under_it(http, functions, queue, workers):
    workers()
    task = finished(http, functions, enqueue(http, functions, queue, "prefix.thing.done"))
    assert task["result"] == {"type": "prefix.thing.done"}


def test_timeout_counts_as_failed_attempt_and_worker_stays_healthy(http, functions, queue, workers):
    workers()
    hung = enqueue(http, functions, queue, "hang", {}, max_attempts=2, timeout_s=0.5)
    task = finished(http, functions, hung)
    assert task["status"] == "failed"
    assert task["attempts"] == 2
    assert task["error"]["type"] == "TimeoutError"
    assert finished(http, functions, enqueue(http, functions, queue, "echo", {"after": 1}))["status"] == "succeeded"


def test_delayed_task_waits_then_runs(http, functions, queue, workers):
    workers()
    began = time.monotonic()
    response = http.post(functions["enqueue"] + "/tasks",
                         json={"type": "echo", "queue": queue, "payload": {}, "delay_s": 1.0})
    assert response.json()["status"] == "scheduled"
    task = finished(http, functions, response.json()["id"])
    assert task["status"] == "succeeded"
    assert time.monotonic() - began >= 1.0


def test_worker_sigkilled_mid_task_is_reclaimed_and_succeeds_once(http, functions, queue, workers, r, keys, channel):
    key = f"exec-{uuid.uuid4().hex}"
    victim = workers()
    task_id = enqueue(http, functions, queue, "record", {"key": key, "seconds": 1.5})
    wait_until(lambda: status(http, functions, task_id)["status"] == "running", message="task running")
    victim.kill()
    workers()
    task = finished(http, functions, task_id)
    assert task["status"] == "succeeded"
    assert task["attempts"] == 2
    assert executions(r, key) == {task_id: 1}, "the killed attempt never finished; the reclaimer ran it once"
    wait_until(lambda: drained(r, keys, queue, channel), message="stream drained")


def test_paused_worker_cannot_overwrite_reclaimers_result(http, functions, queue, workers, r, keys):
    key = f"exec-{uuid.uuid4().hex}"
    paused = workers()
    task_id = enqueue(http, functions, queue, "record", {"key": key, "seconds": 1.0})
    wait_until(lambda: status(http, functions, task_id)["status"] == "running", message="task running")
    paused.signal(signal.SIGSTOP)
    try:
        workers()
        task = finished(http, functions, task_id)
        assert task["status"] == "succeeded" and task["attempts"] == 2
        first = r.hgetall(keys.task(task_id))
    finally:
        paused.signal(signal.SIGCONT)
    # The paused attempt now finishes its handler and tries to write: it must be refused.
    wait_until(lambda: executions(r, key).get(task_id) == 2, message="paused attempt's handler finished")
    wait_until(lambda: "outcome refused" in paused.output(), message="paused worker's write refused")
    assert r.hgetall(keys.task(task_id)) == first


def test_poison_task_that_kills_its_worker_is_dead_lettered_alone(http, functions, queue, workers, r, keys):
    key = f"exec-{uuid.uuid4().hex}"
    poison = enqueue(http, functions, queue, "crash", {"key": key}, max_attempts=2)
    innocents = [enqueue(http, functions, queue, "echo", {"n": n}) for n in range(6)]

    def keep_a_worker_alive() -> bool:  # a supervisor's job: restart workers that died
        if status(http, functions, poison)["status"] == "failed":
            return True
        if all(p.popen.poll() is not None for p in alive):
            alive.append(workers())
        return False

    alive = [workers()]
    wait_until(keep_a_worker_alive, timeout=30, interval=0.1, message="poison task dead-lettered")
    if all(p.popen.poll() is not None for p in alive):
        workers()
    assert all(finished(http, functions, i)["status"] == "succeeded" for i in innocents)
    assert status(http, functions, poison)["error"]["type"] == "WorkerLost"
    assert executions(r, key) == {poison: 2}
    dead = r.xrange(keys.dead(queue))
    assert [fields["id"] for _, fields in dead] == [poison]


def test_sigterm_drains_in_flight_tasks_and_exits_zero(http, functions, queue, workers, r, keys, channel):
    key = f"exec-{uuid.uuid4().hex}"
    worker = workers(concurrency=4)
    ids = [enqueue(http, functions, queue, "record", {"key": key, "seconds": 1.0}) for _ in range(4)]
    wait_until(lambda: all(status(http, functions, i)["status"] == "running" for i in ids), message="all running")
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert [status(http, functions, i)["status"] for i in ids] == ["succeeded"] * 4
    assert executions(r, key) == {i: 1 for i in ids}
    assert drained(r, keys, queue, channel)


def test_sigterm_hands_back_unfinished_tasks_for_another_worker(http, functions, queue, workers, r):
    key = f"exec-{uuid.uuid4().hex}"
    worker = workers(grace_s=0.5, lease_s=30.0)
    task_id = enqueue(http, functions, queue, "record", {"key": key, "seconds": 3.0})
    wait_until(lambda: status(http, functions, task_id)["status"] == "running", message="task running")
    worker.signal(signal.SIGTERM)
    assert worker.wait(10) == 0
    began = time.monotonic()
    workers(lease_s=30.0)  # a full lease would be 30 s; the hand-back makes it immediate
    task = finished(http, functions, task_id)
    assert task["status"] == "succeeded"
    assert time.monotonic() - began < 15


def test_many_tasks_two_workers_each_runs_exactly_once(http, functions, queue, workers, r, keys, channel):
    key = f"exec-{uuid.uuid4().hex}"
    workers()
    workers()
    ids = [enqueue(http, functions, queue, "record", {"key": key}) for _ in range(200)]
    wait_until(lambda: len(executions(r, key)) == 200, timeout=30, message="all 200 executed")
    assert all(status(http, functions, i)["status"] == "succeeded" for i in ids)
    assert set(executions(r, key).values()) == {1}
    wait_until(lambda: drained(r, keys, queue, channel), message="stream drained")


@pytest.mark.parametrize("channel", ["redis"])  # Redis Streams only: Kafka forgets members itself
def test_a_clean_stop_removes_the_workers_consumer_entry(http, functions, queue, workers, r, keys):
    worker = workers()
    finished(http, functions, enqueue(http, functions, queue, "echo", {}))
    stream = keys.stream(queue)
    assert len(r.xinfo_consumers(stream, "taskbus")) == 1
    worker.signal(signal.SIGTERM)
    assert worker.wait(15) == 0
    assert r.xinfo_consumers(stream, "taskbus") == []
