"""Kafka as the channel (CHANNEL=kafka); Redis keeps the task state.

- Records are read in one consumer group per queue (`group.GroupMember`). An offset is
  committed only when every record at or below it has a recorded outcome (success, scheduled
  retry, dead letter, or "not ours to run": `offsets.OffsetBook`), so a SIGKILLed worker's
  uncommitted records go to the survivors.
- The fence lives in the task hash, as for Redis: `kafka_start` takes a task only when it is
  queued, or running under an expired lease (`lease_ms`, renewed by heartbeats); a record of a
  task held under a live lease waits, uncommitted, and is offered again (`reclaim`) when the
  lease may end.
- Retries and delays use the Redis delay schedule and are re-published when due through the
  outbox (`outbox.KafkaOutlet`), so a partition is never blocked by a retry.
- At capacity the partitions are paused but the consumer keeps polling, so a slow task never
  gets its worker thrown out of the group.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Collection
from typing import Any

from taskbus import codec
from taskbus.channel import Delivery, Job, Outcome, Skip, Verdict, run_verdict
from taskbus.channel.fences import Fences
from taskbus.channel.kafka import client as kafka
from taskbus.channel.kafka.group import GroupMember
from taskbus.channel.kafka.offsets import OffsetBook, Partition, parse_entry
from taskbus.channel.kafka.outbox import KafkaOutlet
from taskbus.errors import Unavailable
from taskbus.keys import Keys
from taskbus.registry import ANY_TYPE, HandlerTable
from taskbus.settings import Settings
from taskbus.state.client import connect, unavailable_on_redis_errors
from taskbus.state.scripts import Scripts

log = logging.getLogger(__name__)

PROMOTE_BATCH = 500
BUSY_MARGIN_S = 0.05  # ask again just after the holder's lease would end
DEAD_LETTER_RETRY_S = 1.0
SPARE_CONNECTIONS = 8


class KafkaChannel:
    def __init__(self, settings: Settings, consumer: str, handlers: HandlerTable = ANY_TYPE) -> None:
        self.settings = settings
        self.consumer = consumer
        self.keys = Keys(settings.key_prefix)
        self.client = connect(settings, max_connections=settings.concurrency + SPARE_CONNECTIONS)
        self.scripts = Scripts(self.client)
        self.fences = Fences(settings, consumer, self.client, self.scripts, handlers)
        self.outages = self.fences.outages  # never per queue: one consumer reads every queue's topic
        self.outlet = KafkaOutlet(settings, self.scripts)
        self.book = OffsetBook()
        self.group = GroupMember(settings, consumer, self.book, on_gone=self._gone)
        self.lease_ms = int(settings.lease_s * 1000)
        self._lock = threading.Lock()  # guards the waiting list (the writer thread adds to it)
        self._waiting: list[tuple[float, Delivery]] = []  # records whose task another worker holds
        self._mine: set[str] = set()  # entries whose start reply was lost: ours to take back

    def open(self) -> None:
        """Create the topics and join each queue's consumer group."""
        self.outlet.prepare(list(self.settings.queues))
        self.group.join()
        with unavailable_on_redis_errors():
            self.fences.announce()

    def read(self, count: int, block_ms: int) -> list[Delivery]:
        return self.group.read(count, block_ms)

    def pause(self) -> None:
        self.group.pause()

    def reclaim(self, queue: str, limit: int, running: Collection[str]) -> list[Delivery]:
        """Records set aside because another worker held their task, now worth asking again.
        (A lost start reply puts its records on this list too: see `start`.)"""
        now = time.monotonic()
        with self._lock:
            due = [d for when, d in self._waiting if when <= now and d.queue == queue][:limit]
            taken = {d.entry for d in due}
            self._waiting = [(when, d) for when, d in self._waiting if d.entry not in taken]
        return [d for d in due if self.book.owns(parse_entry(d.entry)[0])]

    def start(self, queue: str, deliveries: list[Delivery]) -> list[Verdict]:
        keys = [self.keys.dead(queue), self.keys.outbox(queue), self.keys.delayed(queue), self.keys.workers(queue),
                *self.fences.start_keys(queue), *self.keys.limits(queue)]
        args: list[Any] = [self.consumer, self.settings.result_ttl_s, self.settings.dead_max, self.lease_ms,
                           *self.fences.typing_args()]
        for d in deliveries:
            assert d.task_id is not None
            keys += [self.keys.task(d.task_id), self.keys.events(d.task_id)]
            args += [d.task_id, "1" if d.entry in self._mine else "0"]
        try:
            with unavailable_on_redis_errors():
                replies = self.scripts.kafka_start(keys=keys, args=args, client=self.client)
        except Unavailable:
            # the script may have marked them running for us: ask again, allowed to take them back
            self._mine.update(d.entry for d in deliveries)
            self._wait(deliveries, 0.0)
            raise
        verdicts: list[Verdict] = []
        dead: list[tuple[Delivery, dict[str, Any]]] = []
        for d, reply in zip(deliveries, replies):
            self._mine.discard(d.entry)
            verdicts.append(self._verdict(d, reply, dead))
        if dead:
            self._dead_letter(dead)
        return verdicts

    def _verdict(self, d: Delivery, reply: list[Any], dead: list[tuple[Delivery, dict[str, Any]]]) -> Verdict:
        """One kafka_start reply as a verdict; what must reach the dead-letter topic goes to `dead`."""
        kind = reply[0]
        if kind == "run":
            return run_verdict(d, reply)
        if kind == "busy":
            self._wait([d], min(int(reply[1]) / 1000, self.settings.lease_s) + BUSY_MARGIN_S)
            return Skip(d, "busy")
        if kind == "deferred":  # back in the delay schedule: this record is done with
            self.book.done([d.entry])
            return Skip(d, "deferred")
        if kind == "throttled":  # waiting for its limit, off the partition: it comes back through the outbox
            self.book.done([d.entry])
            return Skip(d, "throttled", reply[1])
        failed = (kind == "done" and reply[1] == "failed") or (kind == "dead" and len(reply) > 2)
        if failed:  # dead-lettered now (WorkerLost) or before (its topic record may be missing)
            dead.append((d, {"type": reply[2], "attempts": int(reply[3]), "error": _json(reply[4])}))
        elif kind == "dead":  # TaskMissing
            dead.append((d, {"error": {"type": reply[1], "message": "task record not found"}}))
        else:
            self.book.done([d.entry])
        return Skip(d, "dead", reply[1]) if kind == "dead" else Skip(d, "done")

    def finish(self, queue: str, outcomes: list[Outcome]) -> list[str | None]:
        with unavailable_on_redis_errors():
            written = self.fences.finish(queue, outcomes, [""] * len(outcomes))  # offsets, not stream entries
        failed = [
            (o.job.task_id, {"type": o.job.type, "attempts": o.job.attempt, "error": _json(o.body)})
            for o, status in zip(outcomes, written)
            if status == "failed"
        ]
        if failed:  # raises Unavailable: the writer retries the batch (the finish is idempotent)
            self.outlet.publisher.publish([self._dead_record(queue, task_id, fields) for task_id, fields in failed])
        self.book.done([o.job.entry for o in outcomes])
        return written

    def heartbeat(self, queue: str, jobs: list[Job]) -> list[str]:
        return self._lease(jobs, self.lease_ms)

    def cancel_requests(self, queue: str) -> set[str]:
        with unavailable_on_redis_errors():
            return self.fences.cancel_requests(queue)

    def paused(self, queue: str) -> bool:
        """Kafka keeps consuming a paused queue: its start script sends each task back to the
        delay schedule, still queued, to be offered again a second later."""
        with unavailable_on_redis_errors():
            return self.fences.paused(queue)

    def describe(self, info: Callable[[], dict[str, Any]]) -> None:
        self.fences.info = info

    def release(self, queue: str, jobs: list[Job]) -> None:
        """End their leases now, and leave their offsets uncommitted, so the next owner of the
        partition runs them at once."""
        self._lease(jobs, -1)

    def _lease(self, jobs: list[Job], lease_ms: int) -> list[str]:
        keys = [self.keys.task(job.task_id) for job in jobs]
        with unavailable_on_redis_errors():
            lost = self.scripts.kafka_lease(
                keys=keys, args=[self.consumer, lease_ms, *(job.attempt for job in jobs)], client=self.client
            )
        return [jobs[int(i) - 1].entry for i in lost]

    def reject(self, delivery: Delivery, reason: str) -> None:
        """A record that names no well-formed task of its queue: to the dead-letter topic, then on."""
        error = {"type": "MalformedRecord", "message": reason}
        self._dead_letter([(delivery, {"error": error, "record": delivery.fields})])

    def promote_due(self, queue: str) -> int:
        """Publish due delayed tasks (through the outbox); returns ms until the next is due."""
        with unavailable_on_redis_errors():
            moved, wait_ms = self.fences.promote(queue, PROMOTE_BATCH, self.outlet.target(queue))
            self.outlet.publish(queue, moved)
        return wait_ms

    def maintain(self) -> None:
        """Say which types this worker takes; each queue's outbox sweep, on its own timer."""
        with unavailable_on_redis_errors():
            self.fences.announce()
            self.fences.trim_dead()
            for queue in self.settings.queues:
                self.outlet.sweep(queue)

    def _dead_letter(self, items: list[tuple[Delivery, dict[str, Any]]]) -> None:
        try:
            self.outlet.publisher.publish([self._dead_record(d.queue, d.task_id or "", f) for d, f in items])
        except Unavailable as exc:
            log.warning("dead-letter topic unavailable; retrying", extra={"fields": {"error": str(exc)}})
            self._wait([d for d, _ in items], DEAD_LETTER_RETRY_S)  # their offsets stay uncommitted meanwhile
            return
        self.book.done([d.entry for d, _ in items])

    def _dead_record(self, queue: str, task_id: str, fields: dict[str, Any]) -> tuple[str, str, bytes]:
        return kafka.dead_topic(self.settings, queue), task_id, codec.dumps({"id": task_id, **fields})

    def _wait(self, deliveries: list[Delivery], delay_s: float) -> None:
        when = time.monotonic() + delay_s
        with self._lock:
            self._waiting.extend((when, d) for d in deliveries)

    def _gone(self, partitions: list[Partition]) -> None:
        with self._lock:
            self._waiting = [(w, d) for w, d in self._waiting if parse_entry(d.entry)[0] not in partitions]

    def close(self, drained: bool) -> None:
        """Commit what is done and leave the groups (a clean leave rebalances at once)."""
        with contextlib.suppress(Unavailable), unavailable_on_redis_errors():
            self.fences.announce(leaving=True)
        self.group.close()
        self.outlet.close()
        self.client.close()


def _json(raw: str | bytes) -> Any:
    try:
        return codec.loads(raw)
    except ValueError:
        return raw
