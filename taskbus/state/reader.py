"""The status side of the task state: read a task, wait for it to finish, health. Never writes."""

from __future__ import annotations

import threading
import time
from typing import Any

import redis

from taskbus.errors import DataLost
from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.state import cluster
from taskbus.state.client import connect, is_cluster, unavailable_on_redis_errors
from taskbus.task import TERMINAL, queue_of

# How long a long-poll's blocking connection may stay silent beyond the longest wait.
WAIT_SOCKET_MARGIN_S = 2.0
# How often a waiting thread looks at the drain flag (a message wakes it at once regardless).
DRAIN_CHECK_S = 0.5


class StatusReader:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.client = connect(settings)
        # Long-polls block inside Redis: they need their own socket timeout and pool.
        self.blocking = connect(settings, socket_timeout_s=settings.max_wait_s + WAIT_SOCKET_MARGIN_S)
        self.draining = threading.Event()  # set on SIGTERM: every long-poll answers now

    def drain(self) -> None:
        """Make every long-poll answer with the task as it is, within DRAIN_CHECK_S."""
        self.draining.set()

    def get(self, task_id: str) -> dict[str, str] | None:
        """The stored record of a task, or None when unknown, expired or not a task id."""
        if queue_of(task_id) is None:
            return None
        with unavailable_on_redis_errors():
            record: Any = self.client.hgetall(self.keys.task(task_id))
        return record or None

    def wait(self, task_id: str, timeout_s: float) -> dict[str, str] | None:
        """The record once terminal, or as it is when `timeout_s` passes.

        Subscribes to the task's channel first and reads the state after the subscription is
        confirmed, so a change that lands in between is always seen: no missed wake-up, no polling.
        """
        if queue_of(task_id) is None:
            return None
        task_key, channel = self.keys.task(task_id), self.keys.events(task_id)
        deadline = time.monotonic() + timeout_s
        with unavailable_on_redis_errors():
            record: Any = self.client.hgetall(task_key)
            if not record or record.get("status") in TERMINAL:
                return record or None
            pubsub = self.blocking.pubsub()  # type: ignore[no-untyped-call]
            try:
                return self._wait(pubsub, task_key, channel, deadline)
            except (redis.ConnectionError, redis.TimeoutError):
                if is_cluster(self.blocking):  # a subscriber alone never learns of a failover
                    cluster.refresh(self.blocking)
                raise
            finally:
                pubsub.close()

    def _wait(self, pubsub: Any, task_key: str, channel: str, deadline: float) -> dict[str, str] | None:
        """Subscribed (a ClusterPubSub on a cluster), read the state each time a message comes."""
        pubsub.ssubscribe(channel)
        if pubsub.get_sharded_message(timeout=self.settings.redis_socket_timeout_s) is None:
            raise redis.TimeoutError("no subscription confirmation")
        while True:
            record: Any = self.client.hgetall(task_key)
            remaining = deadline - time.monotonic()
            if not record or record.get("status") in TERMINAL or remaining <= 0 or self.draining.is_set():
                return record or None
            pubsub.get_sharded_message(timeout=min(remaining, DRAIN_CHECK_S))

    def close(self) -> None:
        self.client.close()
        self.blocking.close()

    def ping(self) -> None:
        """Redis answers, and no worker has flagged a lost consumer group on QUEUES."""
        queues = self.settings.queues
        with unavailable_on_redis_errors():
            flags_keys = [self.keys.data_lost(q) for q in queues]  # one per queue: MGET on a cluster is per key
            flags = cluster.mget(self.client, flags_keys) if is_cluster(self.client) else self.client.mget(flags_keys)
        lost = [q for q, flag in zip(queues, flags) if flag]
        if lost:
            raise DataLost(
                f"Redis lost the stream or consumer group of queue(s) {', '.join(lost)} "
                "(restarted without persistence?); tasks queued before were lost"
            )
