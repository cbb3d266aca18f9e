"""Kafka clients: configuration, topic names, topic creation, and a publisher that waits for the
broker's acknowledgement.

Only `taskbus.channel.kafka` imports `confluent_kafka`. Redis stays the task-state store; Kafka
carries one small record per publication, `{"id": <task id>}` keyed by the task id.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

from taskbus import codec
from taskbus.errors import Unavailable
from taskbus.settings import Settings
from taskbus.task import DEFAULT_PRIORITY

log = logging.getLogger(__name__)


def client_config(settings: Settings) -> dict[str, Any]:
    """librdkafka settings shared by producers, consumers and the admin client: the servers and
    the optional security settings, passed through as given."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.kafka_bootstrap_servers,
        "logger": logging.getLogger("taskbus.librdkafka"),  # JSON lines like ours, not raw stderr
    }
    for name, value in (
        ("security.protocol", settings.kafka_security_protocol),
        ("sasl.mechanism", settings.kafka_sasl_mechanism),
        ("sasl.username", settings.kafka_sasl_username),
        ("sasl.password", settings.kafka_sasl_password),
        ("ssl.ca.location", settings.kafka_ssl_ca_location),
    ):
        if value:
            config[name] = value
    return config


def topic(settings: Settings, queue: str) -> str:
    return f"{settings.kafka_topic_prefix}.{queue}"


def dead_topic(settings: Settings, queue: str) -> str:
    return f"{settings.kafka_topic_prefix}.{queue}.dead"


def group(settings: Settings, queue: str) -> str:
    """One consumer group per queue, so a worker serving several queues is balanced per queue."""
    return f"{settings.consumer_group}.{queue}"


def ensure_topics(settings: Settings, queues: tuple[str, ...] | list[str], client: Any = None) -> None:
    """Create each queue's work and dead-letter topics when missing (KAFKA_PARTITIONS partitions).
    `client`, a producer or consumer already connected, saves making an admin client just to look."""
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    names = [name for q in queues for name in (topic(settings, q), dead_topic(settings, q))]
    timeout = settings.kafka_produce_timeout_s
    try:
        existing = set((client or AdminClient(client_config(settings))).list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise Unavailable(f"Kafka unavailable: {exc.args[0].str()}") from exc
    if set(names) <= existing:
        return
    admin = AdminClient(client_config(settings))
    missing = [
        NewTopic(name, num_partitions=settings.kafka_partitions, replication_factor=settings.kafka_replication_factor)
        for name in names
        if name not in existing
    ]
    for name, future in admin.create_topics(missing, operation_timeout=timeout, request_timeout=timeout).items():
        try:
            future.result()
            log.info("created topic", extra={"fields": {"topic": name, "partitions": settings.kafka_partitions}})
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise Unavailable(f"Kafka could not create topic {name}: {exc.args[0].str()}") from exc


class Publisher:
    """An idempotent producer (acks=all) shared by a process's threads. `publish` returns only
    once the broker acknowledged every record, and raises `Unavailable` if any was not."""

    def __init__(self, settings: Settings) -> None:
        from confluent_kafka import Producer

        self.settings = settings
        self.timeout_s = settings.kafka_produce_timeout_s
        self._config = {
            **client_config(settings),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,
            "message.timeout.ms": int(self.timeout_s * 1000),
        }
        self.producer = Producer(self._config)
        self._lock = threading.Lock()
        self._ready: set[str] = set()
        self._closed = threading.Event()
        threading.Thread(target=self._serve_callbacks, daemon=True, name="kafka-producer").start()

    def _serve_callbacks(self) -> None:
        while not self._closed.is_set():
            self.producer.poll(0.1)  # the current producer: `_renew` may swap it

    def ensure(self, queues: list[str]) -> None:
        """Create the topics of queues not seen before by this process (once each)."""
        new = [q for q in queues if q not in self._ready]
        if new:
            ensure_topics(self.settings, new, self.producer)
            self._ready.update(new)

    def publish(self, records: list[tuple[str, str, bytes]]) -> None:
        """Produce (topic, key, value) records and wait for all their acknowledgements."""
        if not records:
            return
        acks: queue.SimpleQueue[str | None] = queue.SimpleQueue()  # one per record the producer took
        errors: list[str] = []
        produced = 0
        producer = self.producer
        try:
            for name, key, value in records:
                producer.produce(
                    name,
                    value=value,
                    key=key.encode(),
                    on_delivery=lambda err, _: acks.put(None if err is None else err.str()),
                )
                produced += 1
        except Exception as exc:  # noqa: BLE001 - any refusal (BufferError, KafkaException) is "not published"
            errors.append(f"{type(exc).__name__}: {exc}")
        deadline = time.monotonic() + self.timeout_s + 1
        for _ in range(produced):
            try:
                error = acks.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                errors.append("no acknowledgement in time")
                break
            if error:
                errors.append(error)
        if errors:
            self._renew(producer)
            raise Unavailable(f"Kafka did not acknowledge the task record: {errors[0]}")

    def _renew(self, failed: Any) -> None:
        """After a failure, start over with a new producer and check the topics again: an
        idempotent producer stays stuck on sequence numbers a restarted broker never saw."""
        from confluent_kafka import Producer

        with self._lock:
            if self.producer is not failed:
                return  # another thread renewed it already
            self.producer = Producer(self._config)
            self._ready.clear()
        try:
            failed.purge()  # fails whatever it still holds at once
            failed.flush(0)
        except Exception:  # noqa: BLE001 - a producer in a fatal state may refuse even this
            log.warning("could not purge the failed Kafka producer", exc_info=True)

    def ping(self) -> None:
        from confluent_kafka import KafkaException

        try:
            self.producer.list_topics(timeout=min(self.timeout_s, 2.0))
        except KafkaException as exc:
            raise Unavailable(f"Kafka unavailable: {exc.args[0].str()}") from exc

    def close(self) -> None:
        self.producer.flush(self.timeout_s)
        self._closed.set()


def task_record(settings: Settings, queue: str, task_id: str, anywhere: bool = False,
                priority: int = DEFAULT_PRIORITY) -> tuple[str, str, bytes]:
    """A task's record, keyed by its id (one partition for the first publication). `anywhere`:
    a random key, so the record may land on any partition: a task published again (a retry,
    a delay, a type the last worker had no handler for) should not go back to the same worker.
    A non-default `priority` is in the record (`{"id", "priority"}`): workers order what they
    fetched by it (`group.by_deadline`)."""
    key = f"{task_id}/{os.urandom(4).hex()}" if anywhere else task_id
    value: dict[str, object] = {"id": task_id}
    if priority != DEFAULT_PRIORITY:
        value["priority"] = priority
    return topic(settings, queue), key, codec.dumps(value)
