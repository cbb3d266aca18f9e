"""The status side of the task state for the ASGI path: read a task and long-poll it with
redis-py's asyncio client, so a waiting request holds a coroutine and a Redis connection, never
a thread. Same contract as `StatusReader` (its `ping` stays sync: /healthz is cheap either way)."""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.state.client import unavailable_on_redis_errors
from taskbus.state.reader import WAIT_SOCKET_MARGIN_S
from taskbus.task import TERMINAL, queue_of

# Long-polls one process holds at once (each holds one pub/sub connection while it waits);
# one more waits for a free connection up to the socket timeout, then gets a 503.
MAX_WAITERS = 4096


def connect_async(settings: Settings, *, socket_timeout_s: float | None = None,
                  max_connections: int | None = None) -> redis.asyncio.Redis:
    """The asyncio twin of `state.client.connect`: bounded timeouts, a small retry budget."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections or settings.redis_max_connections,
        timeout=settings.redis_socket_timeout_s,
        socket_timeout=socket_timeout_s or settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), settings.redis_retries),
        decode_responses=True,
        protocol=2,
        driver_info=None,
    )
    return redis.asyncio.Redis(connection_pool=pool)


class AsyncStatusReader:
    """Clients are made per event loop (an asyncio connection belongs to the loop that opened
    it: a gunicorn worker has one loop, a test client may start several)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: redis.asyncio.Redis | None = None
        self._blocking: redis.asyncio.Redis | None = None
        self.draining = asyncio.Event()  # set on SIGTERM: every long-poll answers now

    def _clients(self) -> tuple[redis.asyncio.Redis, redis.asyncio.Redis]:
        loop = asyncio.get_running_loop()
        if self._client is None or self._blocking is None or self._loop is not loop:
            self._loop = loop
            self.draining = asyncio.Event()
            self._client = connect_async(self.settings)
            self._blocking = connect_async(self.settings, max_connections=MAX_WAITERS,
                                           socket_timeout_s=self.settings.max_wait_s + WAIT_SOCKET_MARGIN_S)
        return self._client, self._blocking

    def drain(self) -> None:
        """Wake every long-poll so it answers with the task as it is (call from any thread)."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.draining.set)

    async def get(self, task_id: str) -> dict[str, str] | None:
        """The stored record of a task, or None when unknown, expired or not a task id."""
        if queue_of(task_id) is None:
            return None
        client, _ = self._clients()
        with unavailable_on_redis_errors():
            record: Any = await client.hgetall(self.keys.task(task_id))
        return record or None

    async def wait(self, task_id: str, timeout_s: float) -> dict[str, str] | None:
        """The record once terminal, or as it is when `timeout_s` passes or the process drains.

        As `StatusReader.wait`: subscribe first, read the state once the subscription is
        confirmed, so a change landing in between is always seen."""
        if queue_of(task_id) is None:
            return None
        client, blocking = self._clients()
        task_key, channel = self.keys.task(task_id), self.keys.events(task_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        with unavailable_on_redis_errors():
            record: Any = await client.hgetall(task_key)
            if not record or record.get("status") in TERMINAL or self.draining.is_set():
                return record or None
            pubsub = blocking.pubsub()
            try:
                await pubsub.ssubscribe(channel)
                confirmed = await pubsub.get_message(timeout=self.settings.redis_socket_timeout_s)
                if confirmed is None:
                    raise redis.TimeoutError("no subscription confirmation")
                while True:
                    record = await client.hgetall(task_key)
                    remaining = deadline - loop.time()
                    if not record or record.get("status") in TERMINAL or remaining <= 0 or self.draining.is_set():
                        return record or None
                    await self._next_message(pubsub, remaining)
            finally:
                # shielded: a long-poll cancelled (its client left) must still disconnect the
                # connection before the pool hands it to another long-poll
                await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]

    async def _next_message(self, pubsub: Any, timeout_s: float) -> None:
        """A message on the task's channel, the drain signal, or the timeout: whichever is first."""
        message = asyncio.ensure_future(pubsub.get_message(timeout=timeout_s))
        drained = asyncio.ensure_future(self.draining.wait())
        try:
            await asyncio.wait((message, drained), return_when=asyncio.FIRST_COMPLETED)
        finally:
            # whatever ends the wait (this task cancelled too), no read is left running on the
            # connection: a second reader on it fails ("another coroutine is already waiting")
            drained.cancel()
            if not message.done():
                message.cancel()
                await asyncio.gather(message, return_exceptions=True)
        if not message.cancelled() and message.exception() is not None:
            raise message.exception()

    async def close(self) -> None:
        for client in (self._client, self._blocking):
            if client is not None:
                await client.aclose()
        self._client = self._blocking = None
