"""Every Redis key name and Lua script taskbus uses, in one place.

All keys of a queue share the hash tag `{<queue>}`, and scripts receive every key in
KEYS, so the same scripts run unchanged on Redis Cluster.
"""

from __future__ import annotations

import hashlib
import importlib.resources

from taskbus.task import queue_of

SCRIPT_NAMES = (
    *("enqueue", "start", "finish", "heartbeat", "due", "promote", "drop"),
    *("kstart", "klease", "republish", "abort", "published"),  # the Kafka channel's own
)


def load_script(name: str) -> str:
    """Script `name`, after the functions every script shares (`lua/lib.lua`)."""
    lua = importlib.resources.files("taskbus").joinpath("lua")
    return lua.joinpath("lib.lua").read_text("utf-8") + lua.joinpath(f"{name}.lua").read_text("utf-8")


class Keys:
    """Key names under one prefix (tests give each test its own prefix)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def _q(self, queue: str) -> str:
        return f"{self.prefix}:{{{queue}}}"

    def stream(self, queue: str) -> str:
        """The work stream: one entry per delivery, deleted once acknowledged."""
        return f"{self._q(queue)}:stream"

    def delayed(self, queue: str) -> str:
        """Sorted set of task ids scored by due time (ms, server clock): delays and backoffs."""
        return f"{self._q(queue)}:delayed"

    def outbox(self, queue: str) -> str:  # Kafka: ids not yet started, scored by when to (re)publish
        """Kafka channel: sorted set of task ids recorded but not yet acknowledged by the broker,
        scored by when (ms, server clock); the worker's sweep re-publishes old ones."""
        return f"{self._q(queue)}:outbox"

    def dead(self, queue: str) -> str:
        """The dead-letter stream."""
        return f"{self._q(queue)}:dead"

    def task(self, task_id: str) -> str:
        """The task hash. `task_id` must be well formed (see `task.queue_of`)."""
        return f"{self._q(_queue(task_id))}:task:{task_id.rsplit('~', 1)[1]}"

    def events(self, task_id: str) -> str:
        """The task's sharded pub/sub channel (not a key: it holds no memory); a terminal
        status is published on it to wake long-polls."""
        return f"{self._q(_queue(task_id))}:events:{task_id.rsplit('~', 1)[1]}"

    def data_lost(self, queue: str) -> str:
        """Set (for an hour) when a worker found the queue's stream or group gone: /healthz
        answers 503 while it exists. Delete it to acknowledge."""
        return f"{self._q(queue)}:data-lost"

    def idempotency(self, queue: str, key: str) -> str:
        digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()
        return f"{self._q(queue)}:idem:{digest}"


def _queue(task_id: str) -> str:
    queue = queue_of(task_id)
    if queue is None:
        raise ValueError("malformed task id")  # callers validate first; this is a bug guard
    return queue
