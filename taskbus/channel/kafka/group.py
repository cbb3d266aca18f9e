"""Membership of each queue's consumer group: subscribe, read, pause at capacity, commit what
the offset book allows, and follow rebalances.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from taskbus import codec
from taskbus.channel import Delivery
from taskbus.channel.kafka import client as kafka
from taskbus.channel.kafka.offsets import OffsetBook, Partition, entry_of, parse_entry
from taskbus.settings import Settings
from taskbus.task import DEFAULT_PRIORITY, PRIORITIES, queue_of

log = logging.getLogger(__name__)

METADATA_REFRESH_MS = 10_000  # find a re-created topic within seconds
MALFORMED_KEEP_BYTES = 4096  # of a record that names no task, kept for its dead letter


class GroupMember:
    def __init__(self, settings: Settings, consumer: str, book: OffsetBook,
                 on_gone: Callable[[list[Partition]], None]) -> None:
        self.settings = settings
        self.consumer = consumer
        self.book = book
        self.on_gone = on_gone  # partitions revoked or lost: the channel drops what it holds of them
        self.consumers: dict[str, Any] = {}  # queue -> confluent_kafka.Consumer
        self._queue_of_topic = {kafka.topic(settings, q): q for q in settings.queues}
        self._held: list[Delivery] = []  # read ahead while every slot is busy; returned by the next read
        self._paused = False

    def join(self) -> None:
        """Join each queue's consumer group (from the earliest offset, so records published
        before any worker ran are read)."""
        from confluent_kafka import Consumer

        for queue in self.settings.queues:
            if queue in self.consumers:
                continue
            consumer = Consumer(
                {
                    **kafka.client_config(self.settings),
                    "group.id": kafka.group(self.settings, queue),
                    "client.id": self.consumer,
                    "enable.auto.commit": False,
                    "auto.offset.reset": "earliest",
                    "session.timeout.ms": self.settings.kafka_session_timeout_ms,
                    "max.poll.interval.ms": self.settings.kafka_max_poll_interval_ms,
                    "fetch.wait.max.ms": self.settings.kafka_fetch_wait_ms,
                    "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
                    "heartbeat.interval.ms": max(100, self.settings.kafka_session_timeout_ms // 4),
                }
            )
            consumer.subscribe(
                [kafka.topic(self.settings, queue)], on_assign=self._assigned, on_revoke=self._revoked,
                on_lost=self._lost,
            )
            self.consumers[queue] = consumer
            log.info(
                "joined consumer group", extra={"fields": {"queue": queue, "group": kafka.group(self.settings, queue)}}
            )

    def read(self, count: int, block_ms: int) -> list[Delivery]:
        self.commit()
        if self._paused:
            for consumer in self.consumers.values():
                consumer.resume(consumer.assignment())
            self._paused = False
        self._held = by_deadline(self._held, self.settings.priority_max_delay_s)
        found, self._held = self._held[:count], self._held[count:]
        timeout = block_ms / 1000 / max(1, len(self.consumers))
        for queue, consumer in self.consumers.items():
            if len(found) >= count:
                break
            messages = consumer.consume(num_messages=count - len(found), timeout=0 if found else timeout)
            found.extend(self._book(queue, messages))
        return by_deadline(found, self.settings.priority_max_delay_s)

    def pause(self) -> None:
        """The consumer keeps polling (so the group keeps this member however long tasks run):
        records are read ahead into a small buffer, and once it is full the partitions are paused
        until a slot frees."""
        self.commit()
        for queue, consumer in self.consumers.items():
            room = self.settings.concurrency - len(self._held)
            if room <= 0:
                consumer.pause(consumer.assignment())  # again after a rebalance: new partitions start unpaused
                self._paused = True
            # this call is the poll that keeps the member alive; paused partitions return nothing
            self._held.extend(self._book(queue, consumer.consume(num_messages=max(1, room), timeout=0)))

    def _book(self, queue: str, messages: list[Any]) -> list[Delivery]:
        found = []
        for m in messages:
            if m.error():
                log.warning("kafka consumer error", extra={"fields": {"queue": queue, "error": m.error().str()}})
                continue
            if self.book.read((m.topic(), m.partition()), m.offset()):
                found.append(_delivery(queue, m))
        return found

    def commit(self, partitions: list[Partition] | None = None, sync: bool = False) -> None:
        """Commit, per partition, the offset below which every record has its outcome recorded."""
        from confluent_kafka import KafkaException, TopicPartition

        by_queue: dict[str, list[Any]] = defaultdict(list)
        for (name, partition), position in self.book.positions(partitions).items():
            by_queue[self._queue_of_topic[name]].append(TopicPartition(name, partition, position))
        for queue, offsets in by_queue.items():
            try:
                self.consumers[queue].commit(offsets=offsets, asynchronous=not sync)
            except KafkaException as exc:  # e.g. mid-rebalance: the next owner redoes them, fenced
                log.warning("offset commit failed", extra={"fields": {"queue": queue, "error": exc.args[0].str()}})

    def _assigned(self, consumer: Any, partitions: list[Any]) -> None:
        self.book.assign((p.topic, p.partition) for p in partitions)
        log.info("partitions assigned", extra={"fields": {"partitions": [(p.topic, p.partition) for p in partitions]}})

    def _revoked(self, consumer: Any, partitions: list[Any]) -> None:
        """Before giving partitions up: commit what is done, forget the rest (the next owner
        reads it again; the fence keeps a task that is still running here from running twice)."""
        gone = [(p.topic, p.partition) for p in partitions]
        self.commit(gone, sync=True)
        self._forget(gone)
        log.info("partitions revoked", extra={"fields": {"partitions": gone}})

    def _lost(self, consumer: Any, partitions: list[Any]) -> None:
        gone = [(p.topic, p.partition) for p in partitions]
        self._forget(gone)
        log.warning("partitions lost (session timed out)", extra={"fields": {"partitions": gone}})

    def _forget(self, gone: list[Partition]) -> None:
        self.book.forget(gone)
        self._held = [d for d in self._held if parse_entry(d.entry)[0] not in gone]
        self.on_gone(gone)

    def close(self) -> None:
        """Commit what is done and leave the groups (a clean leave rebalances at once)."""
        self.commit(sync=True)
        for consumer in self.consumers.values():
            consumer.close()
        self.consumers.clear()


def by_deadline(deliveries: list[Delivery], max_delay_s: float) -> list[Delivery]:
    """Priorities on Kafka, within what this worker fetched and has not started: earliest
    virtual deadline first (the record's time plus (9 - priority) * PRIORITY_MAX_DELAY_S / 9,
    the rule of Redis Streams' take.lua). Untouched (FIFO) while every record has the default."""
    if not any("priority" in d.fields for d in deliveries):
        return deliveries
    step_ms = max_delay_s * 1000 / 9

    def deadline(d: Delivery) -> float:
        level = int(d.fields.get("priority", DEFAULT_PRIORITY))
        return int(d.fields.get("time_ms", 0)) + (9 - level) * step_ms

    return sorted(deliveries, key=deadline)


def _delivery(queue: str, message: Any) -> Delivery:
    raw = message.value() or b""
    try:
        record = codec.loads(raw)
        task_id, priority = record.get("id"), record.get("priority")
    except (ValueError, AttributeError):
        task_id = priority = None
    ok = isinstance(task_id, str) and queue_of(task_id) == queue
    fields = {"value": raw[:MALFORMED_KEEP_BYTES].decode("utf-8", "replace")}
    if ok:  # the record's time (ms) and a non-default priority, for `by_deadline`
        fields["time_ms"] = str(message.timestamp()[1])
        if isinstance(priority, int) and priority in PRIORITIES and priority != DEFAULT_PRIORITY:
            fields["priority"] = str(priority)
    return Delivery(queue, entry_of(message.topic(), message.partition(), message.offset()), task_id if ok else None,
                    fields)
