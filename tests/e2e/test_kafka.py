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

import httpx
import pytest
from confluent_kafka import Producer

from local.embedded import EmbeddedKafka
from taskbus.channel.kafka.client import dead_topic, topic
from taskbus.errors import ConfigError
from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.state.scripts import Scripts
from testkit.client import committed, enqueue, executions, finished, read_topic, status
from testkit.functions import fresh_ports, function_pair, start_function
from testkit.procs import stop, wait_until
from testkit.settings import kafka_settings


@pytest.fixture
def channel() -> str:
    return "kafka"


def test_kafka_needs_its_servers_and_a_known_channel() -> None:
    with pytest.raises(ConfigError, match="KAFKA_BOOTSTRAP_SERVERS"):
        Settings.from_env({"CHANNEL": "kafka"})
    with pytest.raises(ConfigError, match="CHANNEL"):
        Settings.from_env({"CHANNEL": "rabbitmq"})


def test_broker_down_is_a_503_and_leaves_no_task_behind(fresh_broker, base_settings, queue, r, tmp_path):
    own_broker = fresh_broker()
    settings = fresh_ports(base_settings, **kafka_settings(own_broker, kafka_produce_timeout_s=1.0))
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
    keys = Keys(base_settings.key_prefix)
    first_key = keys.task(first.json()["id"])
    tasks = list(r.scan_iter(match=first_key.rsplit(":", 1)[0] + ":*"))  # every task hash of the queue
    assert tasks == [first_key], "the refused task's state was undone"
    # the outbox holds the acknowledged task until a worker starts it; the refused one left it
    assert r.zrange(keys.outbox(queue), 0, -1) == [first.json()["id"]]
    assert r.get(keys.idempotency(queue, "k-1")) is None, "a retry with the same key makes a new task"


def test_outbox_sweep_publishes_a_task_whose_enqueue_died_before_producing(http, functions, queue, workers, r, keys):
    # The state an enqueue process leaves when it dies after recording and before producing.
    task_id = f"{queue}~{uuid.uuid4().hex}"
    task_key = keys.task(task_id)
    Scripts(r).enqueue(
        keys=[task_key, keys.outbox(queue), keys.delayed(queue), task_key, keys.levels(queue)],
        args=["outbox", task_id, "echo", queue, '{"from":"outbox"}', 3, "30.0", 0, 3600, "", "", "", ""],
    )
    assert status(http, functions, task_id)["status"] == "queued"
    workers()
    task = finished(http, functions, task_id, timeout=30)
    assert task["status"] == "succeeded" and task["result"] == {"from": "outbox"}
    assert r.zcard(keys.outbox(queue)) == 0


def test_a_retry_never_blocks_its_partition(http, functions, queue, workers, settings):
    workers(backoff_base_s=60.0, backoff_max_s=60.0)
    failing = enqueue(http, functions, queue, "fail", {}, max_attempts=50)
    quick = [enqueue(http, functions, queue, "echo", {"n": n}) for n in range(10)]
    assert all(finished(http, functions, i, timeout=30)["status"] == "succeeded" for i in quick)

    def moved_on() -> bool:
        task = status(http, functions, failing)
        # every record so far (10 + one per publication of the failing task) is behind the commit
        return task["status"] == "scheduled" and committed(settings, queue) == 10 + task["attempts"]

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


def test_poison_and_undecodable_records_go_to_the_dead_letter_topic(http, functions, queue, workers, kafka,
                                                                   settings):
    first = enqueue(http, functions, queue, "echo", {})  # creates the topics
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    producer.produce(topic(settings, queue), value=b"\xff not json")
    producer.produce(topic(settings, queue), value=b'{"id": "another-queue~0123456789abcdef0123456789abcdef"}')
    assert producer.flush(10) == 0
    failing = enqueue(http, functions, queue, "fail", {}, max_attempts=1)
    after = enqueue(http, functions, queue, "echo", {"after": True})
    workers()
    assert finished(http, functions, first)["status"] == "succeeded"
    assert finished(http, functions, after)["result"] == {"after": True}, "the partition moved on"
    assert finished(http, functions, failing)["status"] == "failed"
    dead = read_topic(kafka, dead_topic(settings, queue), expected=3)
    malformed = [d for d in dead if d["error"]["type"] == "MalformedRecord"]
    assert sorted(m["record"]["value"] for m in malformed) == [
        '{"id": "another-queue~0123456789abcdef0123456789abcdef"}',
        "\ufffd not json",
    ]
    assert [(d["id"], d["error"]["type"], d["attempts"]) for d in dead if d not in malformed] == [
        (failing, "RuntimeError", 1)
    ]


def test_a_graceful_stop_hands_partitions_over_without_duplicates(http, functions, queue, workers, r, settings):
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
    wait_until(lambda: committed(settings, queue) == 60, timeout=10, message="every offset committed")


def test_sigkilled_worker_redoes_only_uncommitted_tasks(http, functions, queue, workers, r, keys, settings):
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
    wait_until(lambda: committed(settings, queue) == 40, timeout=10, message="every offset committed")
    assert r.zcard(keys.outbox(queue)) == 0


def on_broker(settings: Settings, broker: EmbeddedKafka, **changes: object) -> Settings:
    """`settings` on a broker of the test's own."""
    return dataclasses.replace(settings, **kafka_settings(broker, **changes))  # type: ignore[arg-type]


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


def test_work_resumes_after_the_broker_restarts_empty(fresh_broker, settings, workers, queue, tmp_path):
    """tansu keeps topics in memory, so a restart is the worst case: every topic is gone. New
    enqueues must re-create them (503 while the broker is down, never a hang) and the running
    worker must find them again."""
    own_broker = fresh_broker()
    with function_pair(on_broker(settings, own_broker, kafka_produce_timeout_s=1.0), tmp_path) as pair, \
            httpx.Client(timeout=30) as http:
        functions = pair.urls
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
def test_an_acknowledged_task_whose_record_the_broker_lost_is_published_again(fresh_broker, settings, workers,
                                                                              queue, tmp_path):
    """The broker acknowledged the record, then lost it (tansu keeps topics in memory: a restart
    loses them all). The task stays in the outbox until a worker starts it, so after
    KAFKA_REDELIVER_S a worker publishes it again and it runs, instead of staying queued."""
    own_broker = fresh_broker()
    with function_pair(on_broker(settings, own_broker, kafka_redeliver_s=5.0), tmp_path) as pair, \
            httpx.Client(timeout=30) as http:
        functions = pair.urls
        task_id = enqueue(http, functions, queue, "echo", {"n": 3})  # 202: the broker has the record
        with restarted_empty(own_broker) as restarted:
            restarted.start()  # empty: the record is gone
            worker = workers(**kafka_settings(own_broker, kafka_redeliver_s=5.0))
            task = finished(http, functions, task_id, timeout=60)
            assert task["status"] == "succeeded" and task["result"] == {"n": 3}
            assert "re-publishing tasks never published or never started" in worker.output()


def test_a_batch_is_published_and_run(http, functions, queue, workers, settings):
    items = [{"type": "echo", "queue": queue, "payload": {"n": n}} for n in range(20)]
    items[5] = {"type": "bad type!", "queue": queue}
    reply = http.post(functions["enqueue"] + "/tasks/batch", json={"tasks": items})
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert "error" in results[5]
    workers()
    ids = [res["id"] for i, res in enumerate(results) if i != 5]
    assert [finished(http, functions, i)["result"]["n"] for i in ids] == [n for n in range(20) if n != 5]
    wait_until(lambda: committed(settings, queue) == 19, timeout=10, message="19 records, every offset committed")
