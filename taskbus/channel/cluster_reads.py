"""Reading many queues' streams on a Redis Cluster: one blocking XREADGROUP per queue, each on
its own thread and connection to the master that owns the queue, so a queue on a slow or failed
master never delays the others (one XREADGROUP over several queues is CROSSSLOT on a cluster).

A read that is still blocked when `read` returns stays in flight and is collected by the next
call, so nothing it delivers is dropped; entries beyond `count` wait in a buffer for the next call.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any

from taskbus.settings import Settings
from taskbus.state import cluster
from taskbus.state.client import REDIS_ERRORS, connect

Reply = list[tuple[str, list[tuple[str, dict[str, str]]]]]  # XREADGROUP's: [(stream, [(entry, fields)])]


class ClusterReads:
    def __init__(self, settings: Settings, group: str, consumer: str,
                 failed: Callable[[str, BaseException], None] | None = None) -> None:
        """`failed(stream, error)`: told of each failed read instead of `read` raising it (the
        channel then backs off that stream's queue alone)."""
        queues = len(settings.queues)
        # A connection per queue's blocked read, on a client of its own: never starves the others.
        self.client = connect(settings, max_connections=queues + 1)
        self.group, self.consumer = group, consumer
        self._pool = concurrent.futures.ThreadPoolExecutor(queues, thread_name_prefix="taskbus-read")
        self._reads: dict[str, concurrent.futures.Future[Reply]] = {}
        self._buffer: list[tuple[str, str, dict[str, str]]] = []  # (stream, entry, fields) read, not yet returned
        self._lock = threading.Lock()
        self._failed = failed

    def read(self, streams: list[str], count: int, block_ms: int) -> list[tuple[str, str, dict[str, str]]]:
        """Up to `count` (stream, entry, fields) delivered to this consumer from `streams`."""
        with self._lock:
            if not self._buffer:
                for stream in streams:
                    if stream not in self._reads:
                        self._reads[stream] = self._pool.submit(self._read_one, stream, count, block_ms)
                self._collect(block_ms)
            taken, self._buffer = self._buffer[:count], self._buffer[count:]
            return taken

    def _collect(self, block_ms: int) -> None:
        """Wait for the first reads to answer (at most `block_ms` plus a margin), keep what they
        delivered; a failed read goes to `failed`, or raises once nothing else was delivered; it
        is issued again by a later call."""
        concurrent.futures.wait(list(self._reads.values()), timeout=block_ms / 1000 + 0.1,
                                return_when=concurrent.futures.FIRST_COMPLETED)
        failure: BaseException | None = None
        for stream, future in list(self._reads.items()):
            if not future.done():
                continue
            del self._reads[stream]
            error = future.exception()
            if isinstance(error, REDIS_ERRORS) and self._failed is not None:
                self._failed(stream, error)
            elif error is not None:
                failure = failure or error
            else:
                self._buffer += [(name, entry, fields) for name, entries in future.result()
                                 for entry, fields in entries]
        if failure is not None and not self._buffer:
            raise failure

    def _read_one(self, stream: str, count: int, block_ms: int) -> Reply:
        with cluster.refreshing(self.client):
            node = cluster.node_client(self.client, stream)  # routed here: no COMMAND GETKEYS round trips
            reply: Any = node.xreadgroup(self.group, self.consumer, {stream: ">"}, count=count, block=block_ms)
        return reply or []

    def close(self) -> None:
        """Let blocked reads end (within one block), then close their connections."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.client.close()
