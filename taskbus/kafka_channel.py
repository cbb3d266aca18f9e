"""The worker's side of Kafka (CHANNEL=kafka): the same interface as `channel.Channel`, so the
worker engine is unchanged.

- Records are read in one consumer group per queue. An offset is committed only when every
  record at or below it has a recorded outcome (success, scheduled retry, dead letter, or "not
  ours to run"), so a SIGKILLed worker's uncommitted records go to the survivors.
- The fence lives in the task hash, as for Redis: `kstart` takes a task only when it is queued,
  or running under an expired lease (`lease_ms`, renewed by heartbeats); a record of a task held
  under a live lease waits, uncommitted, and is offered again (`reclaim`) when the lease may end.
- Retries and delays use the Redis delay schedule and are re-published when due, so a partition
  is never blocked by a retry. Every publication goes through the outbox zset first, and a task
  stays there until a worker starts it: entries never acknowledged (an enqueue that died between
  recording and producing) are re-published after KAFKA_OUTBOX_AGE_S, and acknowledged ones
  no worker started after KAFKA_REDELIVER_S (a broker that lost the record).
- At capacity the partitions are paused but the consumer keeps polling, so a slow task never
  gets its worker thrown out of the group.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from typing import Any

from taskbus import codec, kafka
from taskbus.channel import DEAD_MAXLEN, Channel, Delivery, Job
from taskbus.errors import Unavailable
from taskbus.settings import Settings
from taskbus.store import REDIS_ERRORS, mark_published
from taskbus.task import queue_of

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 5.0

Partition = tuple[str, int]  # (topic, partition)


class KafkaChannel:
    def __init__(self, settings: Settings, consumer: str) -> None:
        self.settings = settings
        self.consumer = consumer
        self.redis = Channel(settings, consumer)  # the task-state side: fenced finish, delay schedule
        self.keys, self.client, self.scripts = self.redis.keys, self.redis.client, self.redis.scripts
        self.lease_ms = self.redis.lease_ms
        self.publisher = kafka.Publisher(settings)
        self.consumers: dict[str, Any] = {}  # queue -> confluent_kafka.Consumer
        self._queue_of_topic = {kafka.topic(settings, q): q for q in settings.queues}
        self._lock = threading.Lock()  # guards the offset books and the waiting list (the writer thread adds to both)
        self._offsets: dict[Partition, dict[int, bool]] = {}  # read offsets -> outcome recorded
        self._committed: dict[Partition, int] = {}
        self._waiting: list[tuple[float, Delivery]] = []  # records whose task another worker holds
        self._mine: set[str] = set()  # entries whose start reply was lost: ours to take back
        self._held: list[Delivery] = []  # read ahead while every slot is busy; returned by the next read
        self._paused = False
        self._next_sweep = 0.0
        self._assignment: set[Partition] = set()  # kept by the rebalance callbacks

    # -- group membership and reading ------------------------------------------------------

    def ensure_groups(self, lost: bool = False) -> None:
        """Create the topics and join each queue's consumer group (from the earliest offset, so
        records published before any worker ran are read)."""
        from confluent_kafka import Consumer

        self.publisher.ensure(list(self.settings.queues))
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
                    "topic.metadata.refresh.interval.ms": 10000,  # find a re-created topic within seconds
                    "heartbeat.interval.ms": max(100, self.settings.kafka_session_timeout_ms // 4),
                }
            )
            consumer.subscribe(
                [kafka.topic(self.settings, queue)],
                on_assign=self._assigned,
                on_revoke=self._revoked,
                on_lost=self._lost,
            )
            self.consumers[queue] = consumer
            log.info(
                "joined consumer group", extra={"fields": {"queue": queue, "group": kafka.group(self.settings, queue)}}
            )

    def read(self, count: int, block_ms: int) -> list[Delivery]:
        self._commit()
        if self._paused:
            for consumer in self.consumers.values():
                consumer.resume(consumer.assignment())
            self._paused = False
        found, self._held = self._held[:count], self._held[count:]
        timeout = block_ms / 1000 / max(1, len(self.consumers))
        for queue, consumer in self.consumers.items():
            if len(found) >= count:
                break
            messages = consumer.consume(num_messages=count - len(found), timeout=0 if found else timeout)
            found.extend(self._track(queue, messages))
        return found

    def at_capacity(self) -> None:
        """Called instead of `read` while every slot is busy. The consumer keeps polling (so the
        group keeps this member however long tasks run): records are read ahead into a small
        buffer, and once it is full the partitions are paused until a slot frees."""
        self._commit()
        for queue, consumer in self.consumers.items():
            room = self.settings.concurrency - len(self._held)
            if room <= 0:
                consumer.pause(consumer.assignment())  # again after a rebalance: new partitions start unpaused
                self._paused = True
            # this call is the poll that keeps the member alive; paused partitions return nothing
            self._held.extend(self._track(queue, consumer.consume(num_messages=max(1, room), timeout=0)))

    def _track(self, queue: str, messages: list[Any]) -> list[Delivery]:
        found = []
        for m in messages:
            if m.error():
                log.warning("kafka consumer error", extra={"fields": {"queue": queue, "error": m.error().str()}})
                continue
            if (m.topic(), m.partition()) not in self._assignment:
                continue  # fetched before a rebalance took its partition away: its new owner reads it
            with self._lock:
                self._offsets.setdefault((m.topic(), m.partition()), {})[m.offset()] = False
            found.append(_delivery(queue, m))
        return found

    def reclaim(self, queue: str, limit: int) -> list[Delivery]:
        """Records set aside because another worker held their task, now worth asking again."""
        now = time.monotonic()
        with self._lock:  # the writer thread adds refused outcomes
            due = [d for when, d in self._waiting if when <= now and d.queue == queue][:limit]
            taken = {d.entry for d in due}
            self._waiting = [(when, d) for when, d in self._waiting if d.entry not in taken]
        return [d for d in due if _parse(d.entry)[:2] in self._assignment]

    def own_orphans(self, queue: str, known: set[str], limit: int) -> list[Delivery]:
        return []  # a lost start reply puts its records back on the waiting list (see `start`)

    # -- fenced transitions ----------------------------------------------------------------

    def start(self, queue: str, deliveries: list[Delivery]) -> list[tuple[Delivery, list[Any]]]:
        keys = [self.keys.dead(queue), self.keys.outbox(queue)]
        args: list[Any] = [self.consumer, self.settings.result_ttl_s, DEAD_MAXLEN, self.lease_ms]
        for d in deliveries:
            assert d.task_id is not None
            keys += [self.keys.task(d.task_id), self.keys.events(d.task_id)]
            args += [d.task_id, "1" if d.entry in self._mine else "0"]
        try:
            verdicts = self.scripts.kstart(keys=keys, args=args, client=self.client)
        except REDIS_ERRORS:
            # the script may have marked them running for us: ask again, allowed to take them back
            self._mine.update(d.entry for d in deliveries)
            self._wait(deliveries, 0.0)
            raise
        out: list[tuple[Delivery, list[Any]]] = []
        dead: list[tuple[Delivery, dict[str, Any]]] = []
        for d, verdict in zip(deliveries, verdicts):
            self._mine.discard(d.entry)
            kind = verdict[0]
            if kind == "busy":
                self._wait([d], min(int(verdict[1]) / 1000, self.settings.lease_s) + 0.05)
            elif kind == "done" and verdict[1] == "failed":  # dead-lettered before: the topic record may be missing
                dead.append((d, {"type": verdict[2], "attempts": int(verdict[3]), "error": _json(verdict[4])}))
            elif kind == "dead" and len(verdict) > 2:  # WorkerLost: the task is failed now
                dead.append((d, {"type": verdict[2], "attempts": int(verdict[3]), "error": _json(verdict[4])}))
            elif kind == "dead":  # TaskMissing
                dead.append((d, {"error": {"type": verdict[1], "message": "task record not found"}}))
            elif kind == "done":
                self._done([d.entry])
            out.append((d, verdict[:2] if kind == "dead" else verdict))
        if dead:
            self._dead_letter(dead)
        return out

    def finish(self, queue: str, outcomes: list[tuple[Job, str, bytes, int]]) -> list[str | None]:
        written = self.redis.finish(queue, outcomes, acks=False)
        failed = [
            (job.task_id, {"type": job.type, "attempts": job.attempt, "error": _json(body)})
            for (job, _, body, _), status in zip(outcomes, written)
            if status == "failed"
        ]
        if failed:  # raises Unavailable: the writer retries the batch (the finish is idempotent)
            self.publisher.publish([self._dead_record(queue, task_id, fields) for task_id, fields in failed])
        self._done([job.entry for job, *_ in outcomes])
        return written

    def heartbeat(self, queue: str, jobs: list[Job]) -> list[str]:
        """Renew leases; returns entries this consumer lost."""
        return self._lease(jobs, self.lease_ms)

    def release(self, queue: str, jobs: list[Job]) -> None:
        """Hand back unfinished tasks on shutdown: end their leases now, and leave their offsets
        uncommitted, so the next owner of the partition runs them at once."""
        self._lease(jobs, -1)

    def _lease(self, jobs: list[Job], lease_ms: int) -> list[str]:
        keys = [self.keys.task(job.task_id) for job in jobs]
        lost = self.scripts.klease(
            keys=keys, args=[self.consumer, lease_ms, *(job.attempt for job in jobs)], client=self.client
        )
        return [jobs[int(i) - 1].entry for i in lost]

    def prune_consumers(self, queue: str, idle_s: float = 3600.0, myself: bool = False) -> list[str]:
        return []  # Kafka forgets group members by itself

    def promote_due(self, queue: str, limit: int = 500) -> int:
        """Publish due delayed tasks (through the outbox), and every few seconds re-publish old
        outbox entries; returns ms until the next delayed task is due (-1: none)."""
        moved, wait_ms = self.redis.promote(queue, limit, "outbox")
        self._publish(queue, moved)
        if time.monotonic() >= self._next_sweep:
            self._next_sweep = time.monotonic() + SWEEP_EVERY_S
            age_ms = int(self.settings.kafka_outbox_age_s * 1000)
            old, _ = self.scripts.due(keys=[self.keys.outbox(queue)], args=[limit, age_ms], client=self.client)
            if old:
                keys = [self.keys.outbox(queue), *(self.keys.task(t) for t in old)]
                again = self.scripts.republish(keys=keys, args=[age_ms, *old], client=self.client)
                if again:
                    log.warning(
                        "re-publishing tasks never published or never started",
                        extra={"fields": {"queue": queue, "tasks": len(again)}},
                    )
                self._publish(queue, again)
        return wait_ms

    def _publish(self, queue: str, task_ids: list[str]) -> None:
        if task_ids:
            self.publisher.ensure([queue])
            self.publisher.publish([kafka.task_record(self.settings, queue, t) for t in task_ids])
            mark_published(self.settings, self.scripts, self.keys, task_ids, self.client)

    def drop(self, d: Delivery, reason: str) -> None:
        """A record that names no well-formed task of its queue: to the dead-letter topic, then on."""
        self._dead_letter([(d, {"error": {"type": "MalformedRecord", "message": reason}, "record": d.fields})])

    def _dead_letter(self, items: list[tuple[Delivery, dict[str, Any]]]) -> None:
        try:
            self.publisher.publish([self._dead_record(d.queue, d.task_id or "", fields) for d, fields in items])
        except Unavailable as exc:
            log.warning("dead-letter topic unavailable; retrying", extra={"fields": {"error": str(exc)}})
            self._wait([d for d, _ in items], 1.0)  # their offsets stay uncommitted meanwhile
            return
        self._done([d.entry for d, _ in items])

    def _dead_record(self, queue: str, task_id: str, fields: dict[str, Any]) -> tuple[str, str, bytes]:
        return kafka.dead_topic(self.settings, queue), task_id, codec.dumps({"id": task_id, **fields})

    def _wait(self, deliveries: list[Delivery], delay_s: float) -> None:
        when = time.monotonic() + delay_s
        with self._lock:
            self._waiting.extend((when, d) for d in deliveries)

    # -- offsets ---------------------------------------------------------------------------

    def _done(self, entries: list[str]) -> None:
        with self._lock:
            for entry in entries:
                topic, partition, offset = _parse(entry)
                book = self._offsets.get((topic, partition))
                if book is not None and offset in book:
                    book[offset] = True

    def _commit(self, partitions: list[Partition] | None = None, sync: bool = False) -> None:
        """Commit, per partition, the offset below which every record has its outcome recorded."""
        from confluent_kafka import KafkaException, TopicPartition

        by_queue: dict[str, list[Any]] = defaultdict(list)
        with self._lock:
            for tp in partitions if partitions is not None else list(self._offsets):
                book = self._offsets.get(tp)
                if not book or tp not in self._assignment:
                    continue  # a commit for a partition another member owns would skip its records
                position = None
                for offset in sorted(book):
                    if not book[offset]:
                        break
                    del book[offset]
                    position = offset + 1
                if position is not None and position > self._committed.get(tp, -1):
                    self._committed[tp] = position
                    by_queue[self._queue_of_topic[tp[0]]].append(TopicPartition(tp[0], tp[1], position))
        for queue, offsets in by_queue.items():
            try:
                self.consumers[queue].commit(offsets=offsets, asynchronous=not sync)
            except KafkaException as exc:  # e.g. mid-rebalance: the next owner redoes them, fenced
                log.warning("offset commit failed", extra={"fields": {"queue": queue, "error": exc.args[0].str()}})

    def _assigned(self, consumer: Any, partitions: list[Any]) -> None:
        self._assignment.update((p.topic, p.partition) for p in partitions)
        log.info("partitions assigned", extra={"fields": {"partitions": [(p.topic, p.partition) for p in partitions]}})

    def _revoked(self, consumer: Any, partitions: list[Any]) -> None:
        """Before giving partitions up: commit what is done, forget the rest (the next owner
        reads it again; the fence keeps a task that is still running here from running twice)."""
        gone = [(p.topic, p.partition) for p in partitions]
        self._commit(gone, sync=True)
        self._forget(gone)
        self._assignment.difference_update(gone)
        log.info("partitions revoked", extra={"fields": {"partitions": gone}})

    def _lost(self, consumer: Any, partitions: list[Any]) -> None:
        gone = [(p.topic, p.partition) for p in partitions]
        self._forget(gone)
        self._assignment.difference_update(gone)
        log.warning("partitions lost (session timed out)", extra={"fields": {"partitions": gone}})

    def _forget(self, gone: list[Partition]) -> None:
        with self._lock:
            for tp in gone:
                self._offsets.pop(tp, None)
                self._committed.pop(tp, None)
            self._waiting = [(w, d) for w, d in self._waiting if _parse(d.entry)[:2] not in gone]
        self._held = [d for d in self._held if _parse(d.entry)[:2] not in gone]

    def close(self) -> None:
        """Commit what is done and leave the groups (a clean leave rebalances at once)."""
        self._commit(sync=True)
        for consumer in self.consumers.values():
            consumer.close()
        self.consumers.clear()
        self.publisher.close()
        self.redis.close()


def _delivery(queue: str, message: Any) -> Delivery:
    entry = f"{message.topic()}/{message.partition()}/{message.offset()}"
    raw = message.value() or b""
    try:
        task_id = codec.loads(raw).get("id")
    except (ValueError, AttributeError):
        task_id = None
    ok = isinstance(task_id, str) and queue_of(task_id) == queue
    return Delivery(queue, entry, task_id if ok else None, {"value": raw[:4096].decode("utf-8", "replace")})


def _parse(entry: str) -> tuple[str, int, int]:
    topic, partition, offset = entry.rsplit("/", 2)
    return topic, int(partition), int(offset)


def _json(raw: str | bytes) -> Any:
    try:
        return codec.loads(raw)
    except ValueError:
        return raw
