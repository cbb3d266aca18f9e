"""Every Redis key name taskbus uses, in one place.

All keys of a queue share the hash tag `{<queue>}`, and scripts receive every key in KEYS:
a Cluster-ready key layout (the client side does not run on Redis Cluster yet).
"""

from __future__ import annotations

import hashlib

from taskbus.task import DEFAULT_PRIORITY, queue_of


class Keys:
    """Key names under one prefix (tests give each test its own prefix)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def _queue_prefix(self, queue: str) -> str:
        return f"{self.prefix}:{{{queue}}}"

    def stream(self, queue: str) -> str:
        """The work stream: one entry per delivery, deleted once acknowledged."""
        return f"{self._queue_prefix(queue)}:stream"

    def level_stream(self, queue: str, level: int) -> str:
        """The work stream of priority `level` (0-9): the default level 5 is `stream` itself, so
        a queue without priorities has exactly today's keys (see channel/levels.py)."""
        return self.stream(queue) if level == DEFAULT_PRIORITY else f"{self._queue_prefix(queue)}:stream:p{level}"

    def levels(self, queue: str) -> str:
        """Set of the non-default priority levels ever enqueued on the queue: while it is empty,
        workers read the queue's one stream as if priorities did not exist."""
        return f"{self._queue_prefix(queue)}:levels"

    def delayed(self, queue: str) -> str:
        """Sorted set of task ids scored by due time (ms, server clock): delays and backoffs."""
        return f"{self._queue_prefix(queue)}:delayed"

    def outbox(self, queue: str) -> str:
        """Kafka channel: sorted set of the ids of tasks recorded and not yet started, scored by
        when (ms, server clock) the worker's sweep publishes them again if still not started."""
        return f"{self._queue_prefix(queue)}:outbox"

    def dead(self, queue: str) -> str:
        """The dead-letter stream."""
        return f"{self._queue_prefix(queue)}:dead"

    def task(self, task_id: str) -> str:
        """The task hash. `task_id` must be well formed (see `task.queue_of`)."""
        return f"{self._queue_prefix(_queue(task_id))}:task:{task_id.rsplit('~', 1)[1]}"

    def events(self, task_id: str) -> str:
        """The task's sharded pub/sub channel (not a key: it holds no memory); a terminal
        status is published on it to wake long-polls."""
        return f"{self._queue_prefix(_queue(task_id))}:events:{task_id.rsplit('~', 1)[1]}"

    def workers(self, queue: str) -> str:
        """Hash of the queue's live workers: consumer name -> JSON {seen_ms, handlers} (the task
        types each has handlers for, with their defaults), renewed with their heartbeats."""
        return f"{self._queue_prefix(queue)}:workers"

    def data_lost(self, queue: str) -> str:
        """Set (for an hour) when a worker found the queue's stream or group gone: /healthz
        answers 503 while it exists. Delete it to acknowledge."""
        return f"{self._queue_prefix(queue)}:data-lost"

    def stats(self, queue: str) -> str:
        """Hash of per-queue counters: a ring of 10-second buckets of terminal states over an
        hour (see lib.lua `flush_tally`), and `evicted`, the dead letters dropped by DEAD_MAX/DEAD_TTL_S."""
        return f"{self._queue_prefix(queue)}:stats"

    def recent(self, queue: str) -> str:
        """Stream of recently finished tasks (id, status), about RECENT_MAX entries."""
        return f"{self._queue_prefix(queue)}:recent"

    def cancels(self, queue: str) -> str:
        """Set of the ids of running tasks with a cancel request; their workers look here."""
        return f"{self._queue_prefix(queue)}:cancels"

    def paused(self, queue: str) -> str:
        """Exists while the queue is paused (JSON {by, at_ms}): workers start nothing from it."""
        return f"{self._queue_prefix(queue)}:paused"

    def redrive(self, redrive_id: str) -> str:
        """A re-drive job's hash (ids look like task ids: `<queue>~<32 hex>`)."""
        return f"{self._queue_prefix(_queue(redrive_id))}:redrive:{redrive_id.rsplit('~', 1)[1]}"

    def redrives(self, queue: str) -> str:
        """Sorted set of the queue's re-drive ids by creation time (ms)."""
        return f"{self._queue_prefix(queue)}:redrives"

    def active_redrives(self, queue: str) -> str:
        """Set of the queue's running re-drive ids: what runners look for."""
        return f"{self._queue_prefix(queue)}:redrives:active"

    def queue_index(self) -> str:
        """Set of every queue name seen (by workers and enqueuers): the console's list of queues.
        The one key outside any queue's hash tag; only SADD and SMEMBERS touch it."""
        return f"{self.prefix}:queues"

    def schedule(self, queue: str, name: str) -> str:
        """A schedule's hash: def (JSON), version, generation, last_s (the last slot fired or
        passed, epoch s), last_task, paused (exists while paused), updated_ms, and after slots
        passed unfired by the misfire policy: missed_ms, missed_from_s, missed_to_s."""
        return f"{self._queue_prefix(queue)}:schedule:{name}"

    def schedules(self, queue: str) -> str:
        """Set of the names of the queue's schedules."""
        return f"{self._queue_prefix(queue)}:schedules"

    def schedulers_seen(self, queue: str) -> str:
        """Exists (a few seconds' TTL, renewed each loop) while some worker runs the queue's
        schedules: slots that fall due while it is missing were missed (see schedule_fire.lua)."""
        return f"{self._queue_prefix(queue)}:schedulers:seen"

    # -- flow control (concurrency slots, rate limits: lua/limits.lua) --

    def limit_holders(self, queue: str) -> str:
        """Hash: task id -> the limit key ("type\0key") whose concurrency slot it holds."""
        return f"{self._queue_prefix(queue)}:limits:holders"

    def limit_held(self, queue: str) -> str:
        """Hash: limit key -> slots held (one per holder in `limit_holders`)."""
        return f"{self._queue_prefix(queue)}:limits:held"

    def throttled(self, queue: str) -> str:
        """Lexicographic zset (scores 0) of "type\0key\0order\0task id": the tasks waiting for a
        concurrency slot, each limit key's FIFO. Its ZCARD is the queue's throttled count."""
        return f"{self._queue_prefix(queue)}:throttled"

    def limit_rates(self, queue: str) -> str:
        """Hash: limit key -> GCRA theoretical arrival time (ms, server clock) of its rate limit."""
        return f"{self._queue_prefix(queue)}:limits:rates"

    def limits(self, queue: str) -> list[str]:
        """The four flow-control keys, in the order the scripts take them in KEYS."""
        return [self.limit_holders(queue), self.limit_held(queue), self.throttled(queue), self.limit_rates(queue)]

    def idempotency(self, queue: str, key: str) -> str:
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
        return f"{self._queue_prefix(queue)}:idem:{digest}"


def _queue(task_id: str) -> str:
    queue = queue_of(task_id)
    if queue is None:
        raise ValueError("malformed task id")  # callers validate first; this is a bug guard
    return queue
