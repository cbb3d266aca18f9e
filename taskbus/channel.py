"""The worker's side of Redis: the consumer group on each queue's stream and the fenced
state transitions (start, finish, heartbeat, reclaim, promote) done by the Lua scripts.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import redis

from taskbus import codec
from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.store import Scripts, connect
from taskbus.task import queue_of

log = logging.getLogger(__name__)

DEAD_MAXLEN = 100_000


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One stream entry handed to this consumer; `task_id` is None when the entry is malformed."""

    queue: str
    entry: str
    task_id: str | None
    fields: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Job:
    """A delivery that `start` marked running: everything needed to run one attempt."""

    queue: str
    entry: str
    task_id: str
    type: str
    payload: Any
    attempt: int
    max_attempts: int
    timeout_s: float


class Channel:
    def __init__(self, settings: Settings, consumer: str) -> None:
        self.settings = settings
        self.consumer = consumer
        self.group = settings.consumer_group
        self.keys = Keys(settings.key_prefix)
        self.client = connect(settings, max_connections=settings.concurrency + 8)
        self.scripts = Scripts(self.client)
        self.lease_ms = int(settings.lease_s * 1000)

    def ensure_groups(self, lost: bool = False) -> None:
        """Create each queue's group at id 0, so tasks enqueued before any worker ran are read.
        `lost`: the group vanished under a running worker (Redis lost its data); the group is
        recreated so new work flows, and the loss is flagged for /healthz to report."""
        for queue in self.settings.queues:
            try:
                self.client.xgroup_create(self.keys.stream(queue), self.group, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
                continue
            if lost:
                self.client.set(self.keys.data_lost(queue), f"consumer group recreated by {self.consumer}", ex=3600)
                log.error(
                    "consumer group was lost and has been recreated: tasks queued before are gone",
                    extra={"fields": {"queue": queue}},
                )
            else:
                log.info("created consumer group", extra={"fields": {"queue": queue}})

    def read(self, count: int, block_ms: int) -> list[Delivery]:
        streams = {self.keys.stream(q): ">" for q in self.settings.queues}
        reply = self.client.xreadgroup(self.group, self.consumer, streams, count=count, block=block_ms)
        by_stream = {self.keys.stream(q): q for q in self.settings.queues}
        return [
            _delivery(by_stream[name], entry, fields) for name, entries in (reply or []) for entry, fields in entries
        ]

    def reclaim(self, queue: str, limit: int) -> list[Delivery]:
        """Take over entries whose lease expired, one at a time: a poison entry that killed its
        worker must not drag innocent entries along with it."""
        found: list[Delivery] = []
        cursor = "0-0"
        while len(found) < limit:
            cursor, claimed, _deleted = self.client.xautoclaim(
                self.keys.stream(queue), self.group, self.consumer, self.lease_ms, cursor, count=1
            )
            found.extend(_delivery(queue, entry, fields) for entry, fields in claimed if fields is not None)
            if cursor == "0-0":
                break
        return found

    def own_orphans(self, queue: str, known: set[str], limit: int) -> list[Delivery]:
        """Entries pending for this very consumer that it is not running: delivered by a read
        whose reply was lost to a connection fault. Taken back at once instead of after a lease."""
        stream = self.keys.stream(queue)
        pending = self.client.xpending_range(stream, self.group, "-", "+", limit + len(known), self.consumer)
        orphans = [p["message_id"] for p in pending if p["message_id"] not in known][:limit]
        if not orphans:
            return []
        claimed = self.client.xclaim(stream, self.group, self.consumer, 0, orphans)
        return [_delivery(queue, entry, fields) for entry, fields in claimed if fields is not None]

    def start(self, queue: str, deliveries: list[Delivery]) -> list[tuple[Delivery, list[Any]]]:
        """Mark a batch running in one script call; returns each delivery with its verdict."""
        keys = [self.keys.stream(queue), self.keys.dead(queue)]
        args: list[Any] = [self.group, self.consumer, self.settings.result_ttl_s, DEAD_MAXLEN]
        for d in deliveries:
            assert d.task_id is not None
            keys += [self.keys.task(d.task_id), self.keys.events(d.task_id)]
            args += [d.entry, d.task_id]
        verdicts = self.scripts.start(keys=keys, args=args, client=self.client)
        return list(zip(deliveries, verdicts))

    def finish(self, queue: str, outcomes: list[tuple[Job, str, bytes, int]], acks: bool = True) -> list[str | None]:
        """Write a batch of (job, outcome, body, retry delay ms) in one script call; returns per
        job the status written, or None where this worker's lease was lost (fenced off).
        `acks`: also XACK and XDEL each job's stream entry (the Kafka channel commits offsets instead)."""
        keys = [self.keys.stream(queue), self.keys.delayed(queue), self.keys.dead(queue)]
        args: list[Any] = [
            self.group,
            self.consumer,
            self.settings.result_ttl_s,
            self.settings.pending_ttl_s,
            DEAD_MAXLEN,
        ]
        for job, outcome, body, delay_ms in outcomes:
            keys += [self.keys.task(job.task_id), self.keys.events(job.task_id)]
            args += [job.entry if acks else "", job.task_id, job.attempt, outcome, body, delay_ms]
        written = self.scripts.finish(keys=keys, args=args, client=self.client)
        return [status or None for status in written]

    def heartbeat(self, queue: str, jobs: list[Job]) -> list[str]:
        """Renew leases; returns entries this consumer lost."""
        entries = [job.entry for job in jobs]
        return self.scripts.heartbeat(
            keys=[self.keys.stream(queue)], args=[self.group, self.consumer, *entries], client=self.client
        )

    def release(self, queue: str, jobs: list[Job]) -> None:
        """Hand back unfinished entries on shutdown: mark them long idle so the next
        reclaim by any worker takes them at once instead of after a full lease."""
        for job in jobs:
            self.client.xclaim(
                self.keys.stream(queue), self.group, self.consumer, 0, [job.entry], idle=self.lease_ms * 10, justid=True
            )

    def prune_consumers(self, queue: str, idle_s: float = 3600.0, myself: bool = False) -> list[str]:
        """Remove consumers (ours on a clean stop, or workers long dead) that hold no pending
        entry, so the group's consumer list stays bounded. Deleting a consumer drops its
        pending entries, so only empty ones go; a live worker's XREADGROUP recreates it."""
        stream, removed = self.keys.stream(queue), []
        for consumer in self.client.xinfo_consumers(stream, self.group):
            mine = consumer["name"] == self.consumer
            if consumer["pending"] == 0 and (myself if mine else consumer["idle"] > idle_s * 1000):
                self.client.xgroup_delconsumer(stream, self.group, consumer["name"])
                removed.append(consumer["name"])
        return removed

    def promote_due(self, queue: str, limit: int = 500) -> int:
        """Move due delayed tasks to the stream; returns ms until the next one is due (-1: none)."""
        return self.promote(queue, limit, "stream")[1]

    def promote(self, queue: str, limit: int, into: str) -> tuple[list[str], int]:
        """Move due delayed tasks into the stream or (Kafka) the outbox; returns the ids moved and
        ms until the next one is due (0: more are due now, -1: none)."""
        due, wait_ms = self.scripts.due(keys=[self.keys.delayed(queue)], args=[limit], client=self.client)
        if not due:
            return [], int(wait_ms)
        target = self.keys.stream(queue) if into == "stream" else self.keys.outbox(queue)
        keys = [self.keys.delayed(queue), target, *(self.keys.task(task_id) for task_id in due)]
        moved = self.scripts.promote(keys=keys, args=[into, *due], client=self.client)
        return moved, 0 if len(due) == limit else int(wait_ms)

    def at_capacity(self) -> None:
        """Every slot is busy: nothing to do (a Redis consumer needs no polling to stay alive)."""

    def close(self) -> None:
        self.client.close()

    def drop(self, d: Delivery, reason: str) -> None:
        error = codec.dumps({"type": "MalformedEntry", "message": reason, "traceback": None})
        self.scripts.drop(
            keys=[self.keys.stream(d.queue), self.keys.dead(d.queue)],
            args=[self.group, self.consumer, d.entry, error, codec.dumps(d.fields), DEAD_MAXLEN],
            client=self.client,
        )


def _delivery(queue: str, entry: str, fields: dict[str, str]) -> Delivery:
    task_id = fields.get("id", "")
    ok = queue_of(task_id) == queue
    return Delivery(queue, entry, task_id if ok else None, fields)
