"""Redis Streams as the channel: one stream per queue, read in one consumer group; an entry
stays pending (its lease) until its outcome is written. The default channel.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Collection, Iterator
from typing import Any

import redis

from taskbus import codec
from taskbus.channel import Delivery, Job, Outcome, Recorded, Skip, Target, Verdict, run_verdict
from taskbus.channel.cluster_reads import ClusterReads
from taskbus.channel.fences import PAUSE_CHECK_S, Fences
from taskbus.channel.levels import Levels, by_level, delivery, split_entry
from taskbus.channel.outages import Outages
from taskbus.errors import DataLost, Unavailable
from taskbus.keys import Keys
from taskbus.registry import ANY_TYPE, HandlerTable
from taskbus.settings import Settings
from taskbus.state.client import REDIS_ERRORS, connect
from taskbus.state.scripts import Scripts
from taskbus.task import DEFAULT_PRIORITY

log = logging.getLogger(__name__)

PROMOTE_BATCH = 500
PRUNE_EVERY_S = 600.0  # how often a worker looks for long-dead consumers in its groups
PRUNE_IDLE_S = 3600.0  # a consumer idle this long, with nothing pending, is forgotten
DATA_LOST_FLAG_S = 3600  # how long /healthz reports a lost group (delete the flag to acknowledge)
SPARE_CONNECTIONS = 8  # beyond one per runner: the control loop, the writer, heartbeats


class StreamsOutlet:
    """Enqueue XADDs the entry in the same script that writes the task: nothing else to do."""

    alone = True

    def __init__(self, settings: Settings) -> None:
        self.keys = Keys(settings.key_prefix)

    def target(self, queue: str) -> Target:
        return Target("stream", self.keys.stream(queue))

    def prepare(self, queues: list[str]) -> None:
        """Streams are created by the first XADD."""

    def recorded(self, tasks: list[Recorded]) -> None:
        """The entry was added with the task's state: already published."""

    def ping(self) -> None:
        """The stream lives in the state store, whose ping the caller does."""

    def close(self) -> None:
        """Nothing of its own to close."""


class StreamsChannel:
    def __init__(self, settings: Settings, consumer: str, handlers: HandlerTable = ANY_TYPE) -> None:
        self.settings = settings
        self.consumer = consumer
        self.group = settings.consumer_group
        self.keys = Keys(settings.key_prefix)
        self.client = connect(settings, max_connections=settings.concurrency + SPARE_CONNECTIONS)
        self.scripts = Scripts(self.client)
        self.outages = Outages(per_queue=settings.cluster)  # a cluster: one master's outage is its queues' only
        self.fences = Fences(settings, consumer, self.client, self.scripts, handlers, self.outages)
        self.outlet = StreamsOutlet(settings)
        self.levels = Levels(settings, consumer, self.client, self.scripts, self.outages)
        self.lease_ms = int(settings.lease_s * 1000)
        self._group_lost = False  # a command found a group missing: `open` recreates it, flagged
        self._orphans_possible: set[str] = set()  # queues where a lost reply may have delivered to us
        self._next_prune = time.monotonic() + PRUNE_EVERY_S
        self._cluster_reads = (ClusterReads(settings, self.group, consumer, self._read_failed)
                               if settings.cluster else None)

    @contextlib.contextmanager
    def _redis(self) -> Iterator[None]:
        """Redis errors leave as ours: an outage is `Unavailable`, a vanished group `DataLost`."""
        try:
            yield
        except REDIS_ERRORS as exc:
            self._orphans_possible.update(self.settings.queues)
            raise Unavailable(f"Redis unavailable: {type(exc).__name__}: {str(exc)[:200]}") from exc
        except redis.ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._group_lost = True
            raise DataLost("consumer group or stream missing (Redis lost its data?)") from exc

    def open(self) -> None:
        """Create each queue's group at id 0, so tasks enqueued before any worker ran are read.
        After a loss (the group vanished under a running worker) the group is recreated so new
        work flows, and the loss is flagged for /healthz to report."""
        with self._redis():
            for queue in self.settings.queues:
                try:
                    self.client.xgroup_create(self.keys.stream(queue), self.group, id="0", mkstream=True)
                except redis.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
                    continue
                self._created(queue)
            self.fences.announce()
            self.levels.reset()
            self.levels.refresh()
        self._group_lost = False

    def _created(self, queue: str) -> None:
        if not self._group_lost:
            log.info("created consumer group", extra={"fields": {"queue": queue}})
            return
        flag = f"consumer group recreated by {self.consumer}"
        self.client.set(self.keys.data_lost(queue), flag, ex=DATA_LOST_FLAG_S)
        log.error(
            "consumer group was lost and has been recreated: tasks queued before are gone",
            extra={"fields": {"queue": queue}},
        )

    def read(self, count: int, block_ms: int) -> list[Delivery]:
        """New entries of the queues not paused (a paused queue's entries wait in its stream)."""
        with self._redis():
            queues = [q for q in self.outages.live(self.settings.queues) if not self.fences.paused(q)]
            if not queues:
                time.sleep(min(block_ms / 1000, PAUSE_CHECK_S))  # every queue paused: look again soon
                return []
            if self.levels.any():  # some queue has priorities in use: read its levels by deadline
                found = self.levels.take(queues, count)
                if found or self._cluster_reads is not None:  # (a cluster then blocks on the default streams)
                    return found or self._cluster_read(queues, count, block_ms)
                return self.levels.wait(queues, block_ms)
            if self._cluster_reads is not None:  # a cluster: one read per queue, on its master
                return self._cluster_read(queues, count, block_ms)
            streams: Any = {self.keys.stream(q): ">" for q in queues}
            reply: Any = self.client.xreadgroup(self.group, self.consumer, streams, count=count, block=block_ms)
        by_stream = {self.keys.stream(q): q for q in self.settings.queues}
        return [delivery(by_stream[name], DEFAULT_PRIORITY, entry, fields)
                for name, entries in (reply or []) for entry, fields in entries]

    def _cluster_read(self, queues: list[str], count: int, block_ms: int) -> list[Delivery]:
        """On a cluster: the queues' default streams, one blocking read per queue on its master
        (a queue's other priority levels are taken by `levels.take` before it blocks, so a new
        entry of another level waits at most one block)."""
        assert self._cluster_reads is not None
        by_stream = {self.keys.stream(q): q for q in queues}
        read = self._cluster_reads.read(list(by_stream), count, block_ms)
        return [delivery(by_stream[name], DEFAULT_PRIORITY, entry, fields) for name, entry, fields in read]

    def _read_failed(self, stream: str, error: BaseException) -> None:
        queue = next(q for q in self.settings.queues if self.keys.stream(q) == stream)
        self._orphans_possible.add(queue)  # its lost reply may have delivered entries to us
        self.outages.failed(queue, error)

    def pause(self) -> None:
        """A Redis consumer needs no polling to stay in its group."""

    def reclaim(self, queue: str, limit: int, running: Collection[str]) -> list[Delivery]:
        """Our own orphans first (entries pending for this very consumer that it does not run:
        delivered by a read whose reply was lost), taken at once instead of after a lease; then
        entries whose lease expired."""
        with self._redis():
            orphans = queue in self._orphans_possible
            self._orphans_possible.discard(queue)
            found: list[Delivery] = []
            for level in self.levels.of(queue):  # each level stream in use, highest first
                if len(found) >= limit:
                    break
                if orphans:
                    found += self._own_orphans(queue, level, running, limit - len(found))
                found += self._expired(queue, level, limit - len(found))
            return found

    def _own_orphans(self, queue: str, level: int, running: Collection[str], limit: int) -> list[Delivery]:
        stream = self.keys.level_stream(queue, level)
        mine = {split_entry(entry)[1] for entry in running if split_entry(entry)[0] == level}
        pending: Any = self.client.xpending_range(stream, self.group, "-", "+", limit + len(mine), self.consumer)
        orphans = [p["message_id"] for p in pending if p["message_id"] not in mine][:limit]
        if not orphans:
            return []
        claimed: Any = self.client.xclaim(stream, self.group, self.consumer, 0, orphans)
        return [delivery(queue, level, entry, fields) for entry, fields in claimed if fields is not None]

    def _expired(self, queue: str, level: int, limit: int) -> list[Delivery]:
        """One at a time: a poison entry that killed its worker must not drag innocent entries
        along with it."""
        found: list[Delivery] = []
        cursor = "0-0"
        while len(found) < limit:
            cursor, claimed, _deleted = self.client.xautoclaim(
                self.keys.level_stream(queue, level), self.group, self.consumer, self.lease_ms, cursor, count=1
            )
            found.extend(delivery(queue, level, entry, fields) for entry, fields in claimed if fields is not None)
            if cursor == "0-0":
                break
        return found

    def start(self, queue: str, deliveries: list[Delivery]) -> list[Verdict]:
        """One start.lua call per level stream in the batch (all in one round trip)."""
        groups = by_level(deliveries, lambda d: d.entry)
        calls = [self._start_call(queue, level, [d for _, d in items]) for level, items in groups.items()]
        if not calls:
            return []
        with self._redis():
            if len(calls) == 1:
                keys, args = calls[0]
                replies = [self.scripts.start(keys=keys, args=args, client=self.client)]
            else:
                replies = self.scripts.run_many(self.scripts.start, calls, fsync=False, wait_ms=0)
        verdicts: list[Verdict | None] = [None] * len(deliveries)
        for items, reply in zip(groups.values(), replies):
            for (index, d), one in zip(items, reply):
                verdicts[index] = _verdict(d, one)
        return [v for v in verdicts if v is not None]

    def _start_call(self, queue: str, level: int, deliveries: list[Delivery]) -> tuple[list[str], list[Any]]:
        keys = [self.keys.level_stream(queue, level), self.keys.dead(queue), self.keys.delayed(queue),
                self.keys.workers(queue), *self.fences.start_keys(queue), *self.keys.limits(queue)]
        args: list[Any] = [self.group, self.consumer, self.settings.result_ttl_s, self.settings.dead_max,
                           *self.fences.typing_args()]
        for d in deliveries:
            assert d.task_id is not None
            keys += [self.keys.task(d.task_id), self.keys.events(d.task_id)]
            args += [split_entry(d.entry)[1], d.task_id]
        return keys, args

    def finish(self, queue: str, outcomes: list[Outcome]) -> list[str | None]:
        """One finish.lua call per level stream among the outcomes (one, unless priorities are
        used; then all in one round trip)."""
        groups = by_level(outcomes, lambda o: o.job.entry)
        if len(groups) == 1 and DEFAULT_PRIORITY in groups:
            with self._redis():
                return self.fences.finish(queue, outcomes, [o.job.entry for o in outcomes])
        calls = [self.fences.finish_call(queue, [o for _, o in items], [split_entry(o.job.entry)[1] for _, o in items],
                                         self.keys.level_stream(queue, level)) for level, items in groups.items()]
        with self._redis():
            replies = self.scripts.run_many(self.scripts.finish, calls, fsync=False, wait_ms=0)
        written: list[str | None] = [None] * len(outcomes)
        for items, statuses in zip(groups.values(), replies):
            for (index, _), status in zip(items, statuses):
                written[index] = status or None
        return written

    def heartbeat(self, queue: str, jobs: list[Job]) -> list[str]:
        lost: list[str] = []
        with self._redis():
            for level, items in by_level(jobs, lambda job: job.entry).items():
                entries = [split_entry(job.entry)[1] for _, job in items]
                gone = set(self.scripts.heartbeat(keys=[self.keys.level_stream(queue, level)],
                                                  args=[self.group, self.consumer, *entries], client=self.client))
                lost += [job.entry for _, job in items if split_entry(job.entry)[1] in gone]
        return lost

    def cancel_requests(self, queue: str) -> set[str]:
        with self._redis():
            return self.fences.cancel_requests(queue)

    def paused(self, queue: str) -> bool:
        with self._redis():
            return self.fences.paused(queue)

    def describe(self, info: Callable[[], dict[str, Any]]) -> None:
        self.fences.info = info

    def release(self, queue: str, jobs: list[Job]) -> None:
        """Mark the entries long idle, so the next reclaim by any worker takes them at once
        instead of after a full lease."""
        with self._redis():
            for job in jobs:
                level, entry = split_entry(job.entry)
                self.client.xclaim(
                    self.keys.level_stream(queue, level), self.group, self.consumer, 0, [entry],
                    idle=self.lease_ms * 10, justid=True,
                )

    def reject(self, delivery: Delivery, reason: str) -> None:
        error = codec.dumps({"type": "MalformedEntry", "message": reason, "traceback": None})
        level, entry = split_entry(delivery.entry)
        keys = [self.keys.level_stream(delivery.queue, level), self.keys.dead(delivery.queue)]
        args: list[Any] = [self.group, self.consumer, entry, error, codec.dumps(delivery.fields),
                           self.settings.dead_max]
        with self._redis():
            self.scripts.dead_letter_malformed(keys=keys, args=args, client=self.client)

    def promote_due(self, queue: str) -> int:
        with self._redis():
            target = self.outlet.target(queue)
            return self.fences.promote(queue, PROMOTE_BATCH, target, self.levels.all_streams(queue))[1]

    def maintain(self) -> None:
        """Say which types this worker takes, and forget long-dead consumers now and then, so
        each group's consumer list stays bounded."""
        with self._redis():
            self.fences.announce()
            self.levels.refresh()
            self.fences.trim_dead()
            if time.monotonic() < self._next_prune:
                return
            self._next_prune = time.monotonic() + PRUNE_EVERY_S
            for queue in self.settings.queues:
                self._prune(queue, myself=False)

    def _prune(self, queue: str, myself: bool) -> list[str]:
        """Remove consumers (ours, or long idle ones) that hold no pending entry. Deleting a
        consumer drops its pending entries, so only empty ones go; a live worker's XREADGROUP
        recreates it."""
        removed = []
        for level in self.levels.of(queue):
            stream = self.keys.level_stream(queue, level)
            for consumer in self.client.xinfo_consumers(stream, self.group):
                mine = consumer["name"] == self.consumer
                if consumer["pending"] == 0 and (myself if mine else consumer["idle"] > PRUNE_IDLE_S * 1000):
                    self.client.xgroup_delconsumer(stream, self.group, consumer["name"])
                    removed.append(consumer["name"])
        return removed

    def close(self, drained: bool) -> None:
        """Drained: forget our consumer too (nothing is lost if Redis does not answer: an empty
        consumer entry stays until a later prune)."""
        if self._cluster_reads is not None:  # first: no read delivers to us after the prune
            self._cluster_reads.close()
        with contextlib.suppress(redis.RedisError):
            self.fences.announce(leaving=True)
            if drained:
                for queue in self.settings.queues:
                    self._prune(queue, myself=True)
        self.client.close()


def _verdict(d: Delivery, reply: list[Any]) -> Verdict:
    if reply[0] == "run":
        return run_verdict(d, reply)
    return Skip(d, reply[0], reply[1] if len(reply) > 1 else "")
