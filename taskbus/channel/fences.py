"""The fenced Redis transitions both channels share: writing outcomes, moving due delayed
tasks to the channel's target, and telling the queue which task types this worker takes. The
scripts check ownership themselves (lua/finish.lua, lua/promote.lua); this module only lays out
their KEYS and ARGV.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

import redis

from taskbus import codec
from taskbus.channel import Outcome, Target
from taskbus.channel.outages import Outages
from taskbus.keys import Keys
from taskbus.registry import HandlerTable
from taskbus.settings import Settings
from taskbus.state.client import REDIS_ERRORS
from taskbus.state.scripts import Scripts

TRIM_DEAD_EVERY_S = 60.0  # how often a worker trims its queues' dead letters to DEAD_MAX and DEAD_TTL_S
PAUSE_CHECK_S = 0.5  # how stale a worker's view of its queues' pause flags may be
DEFER_MAX_MS = 10_000  # the longest pause before a task of an unknown type is offered again
FORGET_WORKER_S = 3600.0  # a worker not seen this long leaves the queue's workers hash


class Fences:
    def __init__(self, settings: Settings, consumer: str, client: redis.Redis, scripts: Scripts,
                 handlers: HandlerTable, outages: Outages | None = None) -> None:
        self.settings = settings
        self.outages = outages or Outages(per_queue=False)
        self.consumer = consumer
        self.keys = Keys(settings.key_prefix)
        self.client = client
        self.scripts = scripts
        self.handlers = codec.dumps(handlers).decode()
        self.live_ms = int(settings.lease_s * 2000)  # two leases without a heartbeat: gone
        self._next_announce = 0.0
        self.info: Callable[[], dict[str, Any]] = dict  # what the worker says of itself (host, pid, in flight...)
        self._paused: set[str] = set()
        self._paused_read = float("-inf")
        self._next_trim = 0.0

    def trim_dead(self) -> None:
        """Drop dead letters older than DEAD_TTL_S and beyond DEAD_MAX (approximately: whole
        stream nodes), counting them as evicted in the queue's stats, every TRIM_DEAD_EVERY_S."""
        now = time.monotonic()
        if now < self._next_trim:
            return
        self._next_trim = now + TRIM_DEAD_EVERY_S
        seconds, micros = self.client.time()
        cutoff = int(seconds) * 1000 + int(micros) // 1000 - self.settings.dead_ttl_s * 1000
        for queue in self.outages.live(self.settings.queues):
            with self.outages.guard(queue):
                dead = self.keys.dead(queue)
                pipe = self.client.pipeline(transaction=False)
                pipe.xtrim(dead, minid=f"{max(cutoff, 0)}-0", approximate=True)
                pipe.xtrim(dead, maxlen=self.settings.dead_max, approximate=True)
                evicted = sum(int(n) for n in pipe.execute())
                if evicted:
                    self.client.hincrby(self.keys.stats(queue), "evicted", evicted)

    def cancel_requests(self, queue: str) -> set[str]:
        return set(self.client.smembers(self.keys.cancels(queue)))  # type: ignore[arg-type]

    def paused(self, queue: str) -> bool:
        """From the pause flags of every queue of this worker, read in one round trip at most
        every PAUSE_CHECK_S (one command per queue: never one command over several queues)."""
        now = time.monotonic()
        if now >= self._paused_read + PAUSE_CHECK_S and self.outages.per_queue:
            self._paused = self._paused_each()
            self._paused_read = now
        elif now >= self._paused_read + PAUSE_CHECK_S:
            pipe = self.client.pipeline(transaction=False)
            for q in self.settings.queues:
                pipe.exists(self.keys.paused(q))
            self._paused = {q for q, n in zip(self.settings.queues, pipe.execute()) if n}
            self._paused_read = now
        return queue in self._paused

    def _paused_each(self) -> set[str]:
        """On a cluster, one queue at a time: a queue whose master is down keeps its last flag."""
        paused = set()
        for q in self.settings.queues:
            was = q in self._paused
            with self.outages.guard(q):
                was = bool(self.client.exists(self.keys.paused(q)))
            if was:
                paused.add(q)
        return paused

    def ending_keys(self, queue: str) -> list[str]:
        """The queue-wide keys every script that ends tasks updates: counters, the recently
        finished index, the cancel requests."""
        return [self.keys.stats(queue), self.keys.recent(queue), self.keys.cancels(queue)]

    def start_keys(self, queue: str) -> list[str]:
        """The start scripts' queue-wide keys after their own: `ending_keys` and the pause flag."""
        return [*self.ending_keys(queue), self.keys.paused(queue)]

    def typing_args(self) -> list[Any]:
        """The start scripts' ARGV about task types: this worker's handler table, the grace
        before an unknown type fails, how long a worker counts as live, the longest deferral;
        then the recently finished index's length."""
        return [self.handlers, int(self.settings.unknown_type_grace_s * 1000), self.live_ms, DEFER_MAX_MS,
                self.settings.recent_max]

    def announce(self, leaving: bool = False) -> None:
        """Tell each queue this worker is alive and which types it takes (or that it left);
        renewed every LEASE_S/3, like a heartbeat."""
        now = time.monotonic()
        if not leaving and now < self._next_announce:
            return
        self._next_announce = now + self.settings.lease_s / 3
        info = codec.dumps(self.info()).decode()
        for queue in self.outages.live(self.settings.queues):
            args: list[Any] = [self.consumer, "" if leaving else self.handlers, int(FORGET_WORKER_S * 1000), info]
            with self.outages.guard(queue):
                self.scripts.announce(keys=[self.keys.workers(queue)], args=args, client=self.client)
        if not leaving:
            # (on a cluster the index lives on one master: its outage is retried at the next announce)
            with contextlib.suppress(*(REDIS_ERRORS if self.outages.per_queue else ())):
                self.client.sadd(self.keys.queue_index(), *self.settings.queues)

    def finish(self, queue: str, outcomes: list[Outcome], entries: list[str]) -> list[str | None]:
        """Write outcomes in one script call; `entries[i]` is the stream entry to acknowledge with
        outcome i ('' when the channel acknowledges otherwise). Returns per outcome the status
        written, or None where this worker's lease was lost (fenced off)."""
        keys, args = self.finish_call(queue, outcomes, entries)
        written = self.scripts.finish(keys=keys, args=args, client=self.client)
        return [status or None for status in written]

    def finish_call(self, queue: str, outcomes: list[Outcome], entries: list[str],
                    stream: str | None = None) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of `finish`'s script call, acknowledging `entries` in `stream` (default:
        the queue's stream; Redis Streams passes a priority level's)."""
        keys = [stream or self.keys.stream(queue), self.keys.delayed(queue), self.keys.dead(queue),
                *self.ending_keys(queue), *self.keys.limits(queue)]
        args: list[Any] = [
            self.settings.consumer_group,
            self.consumer,
            self.settings.result_ttl_s,
            self.settings.pending_ttl_s,
            self.settings.dead_max,
            self.settings.recent_max,
        ]
        for outcome, entry in zip(outcomes, entries, strict=True):
            job = outcome.job
            keys += [self.keys.task(job.task_id), self.keys.events(job.task_id)]
            args += [entry, job.task_id, job.attempt, outcome.kind, outcome.body, outcome.delay_ms]
        return keys, args

    def promote(self, queue: str, limit: int, target: Target, levels: list[str] | None = None) -> tuple[list[str], int]:
        """Move due delayed tasks into `target` (or, given `levels`, the ten streams of priority
        levels 0-9: each task into its own level's); returns the ids moved and ms until the next
        one is due (0: more are due now, -1: none)."""
        due, wait_ms = self.read_due(self.keys.delayed(queue), limit)
        if not due:
            return [], wait_ms
        targets = levels or [target.key]
        keys = [self.keys.delayed(queue), self.keys.levels(queue), *targets, *(self.keys.task(t) for t in due)]
        args = [target.kind, len(targets), *due]
        moved: list[str] = self.scripts.promote(keys=keys, args=args, client=self.client)
        return moved, 0 if len(due) == limit else wait_ms

    def read_due(self, zset: str, limit: int, age_ms: int = 0) -> tuple[list[str], int]:
        """Ids in `zset` due by the server's clock (older than `age_ms`), and ms until the next."""
        due, wait_ms = self.scripts.read_due(keys=[zset], args=[limit, age_ms], client=self.client)
        return list(due), int(wait_ms)
