"""What only the Kafka channel has: broker acknowledgement before 202, the outbox, offset commits
that never pass an unrecorded outcome, polling while tasks run, and the dead-letter topics.
(The end-to-end suite in test_worker_e2e.py runs on Kafka as well.)"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from local.embedded import EmbeddedKafka, free_port
from taskbus import codec
from taskbus.errors import ConfigError
from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.store import Scripts
from tests.support import kafka_settings, start_function, stop, wait_until
from tests.test_worker_e2e import enqueue, executions, finished, status


@pytest.fixture
def channel() -> str:
    return "kafka"


def topic(queue: str) -> str:
    return f"taskbus.{queue}"


def committed(broker: EmbeddedKafka, queue: str, partitions: int = 2) -> int:
    """Sum over the queue's partitions of the group's committed offsets (records behind it)."""
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"taskbus.{queue}"})
    try:
        offsets = consumer.committed([TopicPartition(topic(queue), p) for p in range(partitions)], timeout=5)
        return sum(max(0, tp.offset) for tp in offsets)
    finally:
        consumer.close()


def read_topic(broker: EmbeddedKafka, name: str, expected: int, timeout: float = 30) -> list[dict[str, Any]]:
    """Every record of topic `name` (JSON values), once `expected` of them arrived."""
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 3000,
        }
    )
    consumer.subscribe([name])
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is not None and not message.error():
                records.append(codec.loads(message.value()))
        return records
    finally:
        consumer.close()


def test_kafka_needs_its_servers_and_a_known_channel() -> None:
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS"):
        Settings.from_env({"CHANNEL": "kafka"})
    with pytest.raises(ConfigError, match="CHANNEL"):
        Settings.from_env({"CHANNEL": "rabbitmq"})


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedKafka]:
    broker = EmbeddedKafka(tmp_path / "kafka")
    broker.start()
    yield broker
    broker.kill()


def test_broker_down_is_a_503_and_leaves_no_task_behind(own_broker, base_settings, queue, r, tmp_path):
    settings = dataclasses.replace(
        base_settings, enqueue_port=free_port(), **kafka_settings(own_broker, kafka_produce_timeout_s=1.0)
    )
    proc, url = start_function("enqueue", settings, tmp_path)
    try:
        with httpx.Client(timeout=30) as http:
            first = http.post(url + "/tasks", json={"type": "echo", "queue": queue})
            assert first.status_code == 202, first.text
            own_broker.kill()
            began = time.monotonic()
            refused = http.post(
                url + "/tasks", json={"type": "echo", "queue": queue}, headers={"Idempotency-Key": "k-1"}
            )
            elapsed = time.monotonic() - began
            assert refused.status_code == 503, refused.text
            assert refused.headers["Retry-After"]
            assert refused.json()["error"]["code"] == "unavailable"
            assert elapsed < 5, "bounded by KAFKA_PRODUCE_TIMEOUT_S, never a hang"
            assert http.get(url + "/healthz").status_code == 503
    finally:
        stop(proc)
    keys = Keys("tb")
    tasks = list(r.scan_iter(match=f"tb:{{{queue}}}:task:*"))
    assert tasks == [keys.task(first.json()["id"])], "the refused task's state was undone"
    # the outbox holds the acknowledged task until a worker starts it; the refused one left it
    assert r.zrange(keys.outbox(queue), 0, -1) == [first.json()["id"]]
    assert r.get(keys.idempotency(queue, "k-1")) is None, "a retry with the same key makes a new task"


def test_outbox_sweep_publishes_a_task_whose_enqueue_died_before_producing(http, functions, queue, workers, r):
    # The state an enqueue process leaves when it dies after recording and before producing.
    keys, task_id = Keys("tb"), f"{queue}~{uuid.uuid4().hex}"
    task_key = keys.task(task_id)
    Scripts(r).enqueue(
        keys=[task_key, keys.outbox(queue), keys.delayed(queue), task_key],
        args=["outbox", task_id, "echo", queue, '{"from":"outbox"}', 3, "30.0", 0, 3600, ""],
    )
    assert status(http, functions, task_id)["status"] == "queued"
    workers()
    task = finished(http, functions, task_id, timeout=30)
    assert task["status"] == "succeeded" and task["result"] == {"from": "outbox"}
    assert r.zcard(keys.outbox(queue)) == 0


def test_a_retry_never_blocks_its_partition(http, functions, queue, workers, kafka):
    workers(backoff_base_s=60.0, backoff_max_s=60.0)
    failing = enqueue(http, functions, queue, "fail", {}, max_attempts=50)
    quick = [enqueue(http, functions, queue, "echo", {"n": n}) for n in range(10)]
    assert all(finished(http, functions, i, timeout=30)["status"] == "succeeded" for i in quick)

    def moved_on() -> bool:
        task = status(http, functions, failing)
        # every record so far (10 + one per publication of the failing task) is behind the commit
        return task["status"] == "scheduled" and committed(kafka, queue) == 10 + task["attempts"]

    wait_until(moved_on, timeout=20, interval=0.2, message="offsets committed past the task waiting to retry")


def test_a_slow_task_keeps_its_worker_in_the_group(http, functions, queue, workers, r):
    key = f"exec-{uuid.uuid4().hex}"
    # one slot, and a poll interval far shorter than the task: only polling while it runs keeps the member
    worker = workers(concurrency=1, kafka_max_poll_interval_ms=3500, lease_s=20.0)
    slow = enqueue(http, functions, queue, "record", {"key": key, "seconds": 8})
    rest = [enqueue(http, functions, queue, "record", {"key": key}) for _ in range(3)]
    assert finished(http, functions, slow, timeout=40)["attempts"] == 1
    assert all(finished(http, functions, i)["status"] == "succeeded" for i in rest)
    assert executions(r, key) == {i: 1 for i in [slow, *rest]}
    log = worker.output()
    assert "partitions revoked" not in log and "partitions lost" not in log


def test_poison_and_undecodable_records_go_to_the_dead_letter_topic(http, functions, queue, workers, kafka):
    first = enqueue(http, functions, queue, "echo", {})  # creates the topics
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    producer.produce(topic(queue), value=b"\xff not json")
    producer.produce(topic(queue), value=b'{"id": "another-queue~0123456789abcdef0123456789abcdef"}')
    assert producer.flush(10) == 0
    failing = enqueue(http, functions, queue, "fail", {}, max_attempts=1)
    after = enqueue(http, functions, queue, "echo", {"after": True})
    workers()
    assert finished(http, functions, first)["status"] == "succeeded"
    assert finished(http, functions, after)["result"] == {"after": True}, "the partition moved on"
    assert finished(http, functions, failing)["status"] == "failed"
    dead = read_topic(kafka, topic(queue) + ".dead", expected=3)
    malformed = [d for d in dead if d["error"]["type"] == "MalformedRecord"]
    assert sorted(m["record"]["value"] for m in malformed) == [
        '{"id": "another-queue~0123456789abcdef0123456789abcdef"}',
        "\ufffd not json",
    ]
    assert [(d["id"], d["error"]["type"], d["attempts"]) for d in dead if d not in malformed] == [
        (failing, "RuntimeError", 1)
    ]


def test_a_graceful_stop_hands_partitions_over_without_duplicates(http, functions, queue, workers, r, kafka):
    key = f"exec-{uuid.uuid4().hex}"
    leaving = workers(concurrency=4)
    workers(concurrency=4)
    ids = [enqueue(http, functions, queue, "record", {"key": key, "seconds": 0.1}) for _ in range(60)]
    wait_until(lambda: len(executions(r, key)) >= 10, timeout=30, message="work under way")
    leaving.signal(signal.SIGTERM)
    assert leaving.wait(20) == 0
    wait_until(lambda: len(executions(r, key)) == 60, timeout=40, message="every task run")
    assert all(status(http, functions, i)["status"] == "succeeded" for i in ids)
    assert set(executions(r, key).values()) == {1}, "a clean leave redoes nothing"
    wait_until(lambda: committed(kafka, queue) == 60, timeout=10, message="every offset committed")


def test_sigkilled_worker_redoes_only_uncommitted_tasks(http, functions, queue, workers, r, kafka):
    key = f"exec-{uuid.uuid4().hex}"
    victim = workers(concurrency=2)
    survivor = workers(concurrency=2)
    ids = [enqueue(http, functions, queue, "record", {"key": key, "seconds": 0.2}) for _ in range(40)]
    wait_until(lambda: len(executions(r, key)) >= 8, timeout=30, message="work under way")
    victim.kill()
    wait_until(lambda: all(status(http, functions, i)["status"] == "succeeded" for i in ids), timeout=60,
               interval=0.2, message="every task succeeded after the kill")
    runs = executions(r, key)
    assert set(runs) == set(ids)
    assert sum(runs.values()) - len(ids) <= 2, "at most the victim's in-flight tasks run twice"
    assert survivor.popen.poll() is None
    wait_until(lambda: committed(kafka, queue) == 40, timeout=10, message="every offset committed")
    assert r.zcard(Keys("tb").outbox(queue)) == 0


@contextlib.contextmanager
def functions_on(broker: EmbeddedKafka, settings: Settings, log_dir: Path, **changes: Any) -> Iterator[dict[str, str]]:
    """The enqueue and status functions on a broker of the test's own, stopped after."""
    settings = dataclasses.replace(settings, enqueue_port=free_port(), status_port=free_port(),
                                   **kafka_settings(broker, **changes))
    enqueue_fn, enqueue_url = start_function("enqueue", settings, log_dir)
    status_fn, status_url = start_function("status", settings, log_dir)
    try:
        yield {"enqueue": enqueue_url, "status": status_url}
    finally:
        stop(enqueue_fn)
        stop(status_fn)


@contextlib.contextmanager
def restarted_empty(broker: EmbeddedKafka) -> Iterator[EmbeddedKafka]:
    """Kill the broker and start it again on its port: tansu keeps topics in memory, so it comes
    back with none (the worst case of a broker restart)."""
    broker.kill()
    again = EmbeddedKafka(broker.log_dir, port=broker.port)
    try:
        yield again
    finally:
        again.kill()


def test_work_resumes_after_the_broker_restarts_empty(own_broker, settings, workers, queue, tmp_path):
    """tansu keeps topics in memory, so a restart is the worst case: every topic is gone. New
    enqueues must re-create them (503 while the broker is down, never a hang) and the running
    worker must find them again."""
    with functions_on(own_broker, settings, tmp_path, kafka_produce_timeout_s=1.0) as functions, \
            httpx.Client(timeout=30) as http:
        workers(**kafka_settings(own_broker))
        assert finished(http, functions, enqueue(http, functions, queue, "echo", {"n": 1}))["status"] == "succeeded"
        with restarted_empty(own_broker) as restarted:
            refused = http.post(functions["enqueue"] + "/tasks", json={"type": "echo", "queue": queue})
            assert refused.status_code == 503
            restarted.start()

            def accepted() -> str | None:
                reply = http.post(functions["enqueue"] + "/tasks",
                                  json={"type": "echo", "queue": queue, "payload": {"n": 2}})
                return str(reply.json()["id"]) if reply.status_code == 202 else None

            task_id = wait_until(accepted, timeout=20, interval=0.5, message="enqueue accepted again")
            task = finished(http, functions, task_id, timeout=60)
            assert task["status"] == "succeeded" and task["result"] == {"n": 2}


@pytest.mark.timeout(120)
def test_an_acknowledged_task_whose_record_the_broker_lost_is_published_again(own_broker, settings, workers,
                                                                              queue, tmp_path):
    """The broker acknowledged the record, then lost it (tansu keeps topics in memory: a restart
    loses them all). The task stays in the outbox until a worker starts it, so after
    KAFKA_REDELIVER_S a worker publishes it again and it runs, instead of staying queued."""
    with functions_on(own_broker, settings, tmp_path, kafka_redeliver_s=5.0) as functions, \
            httpx.Client(timeout=30) as http:
        task_id = enqueue(http, functions, queue, "echo", {"n": 3})  # 202: the broker has the record
        with restarted_empty(own_broker) as restarted:
            restarted.start()  # empty: the record is gone
            worker = workers(**kafka_settings(own_broker, kafka_redeliver_s=5.0))
            task = finished(http, functions, task_id, timeout=60)
            assert task["status"] == "succeeded" and task["result"] == {"n": 3}
            assert "re-publishing tasks never published or never started" in worker.output()


def test_a_batch_is_published_and_run(http, functions, queue, workers, kafka):
    items = [{"type": "echo", "queue": queue, "payload": {"n": n}} for n in range(20)]
    items[5] = {"type": "bad type!", "queue": queue}
    reply = http.post(functions["enqueue"] + "/tasks/batch", json={"tasks": items})
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert "error" in results[5]
    workers()
    ids = [res["id"] for i, res in enumerate(results) if i != 5]
    assert [finished(http, functions, i)["result"]["n"] for i in ids] == [n for n in range(20) if n != 5]
    wait_until(lambda: committed(kafka, queue) == 19, timeout=10, message="19 records, every offset committed")
