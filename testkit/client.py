"""What tests ask of a running system, through its HTTP functions and its stores: enqueue a
task, read or long-poll its status, count handler executions, read a Kafka topic, sum a
consumer group's committed offsets.

`functions` is `{"enqueue": url, "status": url}` (the `functions` fixture, `FunctionPair.urls`).
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import redis
from confluent_kafka import Consumer, TopicPartition

from local.embedded import EmbeddedKafka
from taskbus import codec
from taskbus.channel.kafka.client import group, topic
from taskbus.settings import Settings

FINISHED = ("succeeded", "failed")


def enqueue(http: httpx.Client, functions: dict[str, str], queue: str, type_: str, payload: Any = None,
            **options: Any) -> str:
    """POST /tasks; the task's id, once the answer is a 202."""
    body = {"type": type_, "queue": queue, "payload": payload if payload is not None else {}, **options}
    response = http.post(functions["enqueue"] + "/tasks", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def status(http: httpx.Client, functions: dict[str, str], task_id: str, wait: float = 0) -> dict[str, Any]:
    """GET /tasks/<id>, long-polling up to `wait` s if given."""
    response = http.get(f"{functions['status']}/tasks/{task_id}", params={"wait": wait} if wait else None)
    assert response.status_code == 200, response.text
    return dict(response.json())


def finished(http: httpx.Client, functions: dict[str, str], task_id: str, timeout: float = 20) -> dict[str, Any]:
    """Long-poll until terminal (each wait blocks server-side; no client-side polling)."""
    deadline = time.monotonic() + timeout
    while True:
        task = status(http, functions, task_id, wait=min(10, max(1, deadline - time.monotonic())))
        if task["status"] in FINISHED or time.monotonic() > deadline:
            return task


def executions(r: redis.Redis, key: str) -> dict[str, int]:
    """Executions per task id, as `tests.handlers.record` counts them in the hash `key`."""
    return {k: int(v) for k, v in r.hgetall(key).items()}


def committed(settings: Settings, queue: str) -> int:
    """Sum over the queue's partitions of its group's committed offsets (records behind it)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": group(settings, queue)})
    try:
        partitions = [TopicPartition(topic(settings, queue), p) for p in range(settings.kafka_partitions)]
        return sum(max(0, tp.offset) for tp in consumer.committed(partitions, timeout=5))
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
