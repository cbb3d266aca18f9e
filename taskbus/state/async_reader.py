"""The status side of the task state for the ASGI path: read a task and long-poll it with
redis-py's asyncio client, so a waiting request holds a coroutine, never a thread, and all the
long-polls of a process share one pub/sub connection (`Subscriptions`). Same contract as
`StatusReader` (its `ping` stays sync: /healthz is cheap either way)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio

from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.state.client import (
    LoopClient,
    connect_async,
    connect_async_node,
    is_cluster,
    unavailable_on_redis_errors,
)
from taskbus.task import TERMINAL, queue_of

# How long the one reader of the shared subscription waits per read (below the socket timeout).
READ_S = 0.5
# How long a request may queue for one of the REDIS_MAX_CONNECTIONS connections: a burst of
# thousands of long-polls arriving at once waits its turn (each read takes well under a ms)
# instead of failing; a Redis that is down still fails fast (connect and socket timeouts).
POOL_WAIT_S = 5.0


class Subscriptions:
    """Every long-poll of one event loop on one sharded pub/sub connection: a waiter joins its
    task's channel, the channel is subscribed once however many wait on it (and unsubscribed
    when the last one leaves), and one reader task hands each message to the waiters of its
    channel. Thousands of waiting clients cost one Redis connection, not one each.

    With `coalesce` (standalone Redis), the channels joined in one turn of the event loop are
    subscribed with one SSUBSCRIBE: a burst of a thousand long-polls is a few commands, not a
    thousand. (On a cluster one SSUBSCRIBE may only name channels of one slot.)"""

    def __init__(self, client: redis.asyncio.Redis, confirm_s: float, coalesce: bool = False) -> None:
        self.client = client
        self.confirm_s = confirm_s
        self.coalesce = coalesce
        self._pubsub: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._confirming: dict[str, asyncio.Future[None]] = {}
        self._connecting = asyncio.Lock()
        self._batch: list[str] | None = None  # channels to subscribe at the end of this loop turn

    async def join(self, channel: str) -> asyncio.Future[None]:
        """A future done at the next message on `channel`. Returns once the subscription is
        confirmed, so anything published after this returns reaches the future."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        waiters = self._waiters.setdefault(channel, set())
        waiters.add(waiter)
        try:
            if len(waiters) == 1:  # the first waiter on this channel subscribes
                self._confirming[channel] = loop.create_future()
                await self._subscribe(channel)
            confirming = self._confirming.get(channel)
            if confirming is not None:
                await asyncio.wait_for(asyncio.shield(confirming), self.confirm_s)
        except BaseException:
            await asyncio.shield(self.leave(channel, waiter))
            raise
        return waiter

    async def _subscribe(self, channel: str) -> None:
        if not self.coalesce:
            await (await self._connection()).ssubscribe(channel)
            return
        if self._batch is not None:  # another join of this turn sends it
            self._batch.append(channel)
            return
        self._batch = batch = [channel]
        try:
            await asyncio.sleep(0)  # the other joins of this turn add their channels
            self._batch = None
            await (await self._connection()).ssubscribe(*batch)
        except BaseException as exc:
            self._batch = None
            failure = exc if isinstance(exc, redis.RedisError) else redis.ConnectionError(str(exc))
            for other in batch[1:]:  # their joins wait for a confirmation that will not come
                confirming = self._confirming.get(other)
                if confirming is not None and not confirming.done():
                    confirming.set_exception(failure)
            raise

    def rearm(self, channel: str, waiter: asyncio.Future[None]) -> asyncio.Future[None]:
        """A fresh future for the next message, in place of `waiter` (done), still subscribed."""
        fresh: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(channel, set())
        waiters.discard(waiter)
        waiters.add(fresh)
        return fresh

    async def leave(self, channel: str, waiter: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(channel)
        if waiters is None or waiter not in waiters:
            return
        waiters.discard(waiter)
        if waiters:
            return
        del self._waiters[channel]
        self._confirming.pop(channel, None)
        if self._batch is not None and channel in self._batch:  # not sent yet: nothing to undo
            self._batch.remove(channel)
        elif self._pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                await self._pubsub.sunsubscribe(channel)

    async def _connection(self) -> Any:
        """The shared subscriber, connected once (concurrent first joins would each take a
        connection of their own otherwise)."""
        async with self._connecting:
            if self._pubsub is None:
                pubsub = self.client.pubsub()
                await pubsub.connect()  # type: ignore[no-untyped-call]
                self._pubsub = pubsub
                self._reader = asyncio.ensure_future(self._read(pubsub))
        return self._pubsub

    async def _read(self, pubsub: Any) -> None:
        """The connection's one reader: confirmations and messages to their futures. On a
        connection error every waiter fails (a 503 each) and the next long-poll reconnects."""
        try:
            while True:
                if not pubsub.subscribed:  # nothing subscribed (yet, or any more): the next join wakes us
                    await asyncio.sleep(0.01)
                    continue
                message = await pubsub.get_message(timeout=READ_S)
                if message is None:
                    continue
                channel = message.get("channel")
                if message["type"] == "ssubscribe":
                    confirming = self._confirming.pop(channel, None)
                    if confirming is not None and not confirming.done():
                        confirming.set_result(None)
                elif message["type"] == "smessage":
                    for waiter in self._waiters.get(channel, ()):
                        if not waiter.done():
                            waiter.set_result(None)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every waiter learns of it, as a Redis error
            self._fail(pubsub, exc if isinstance(exc, redis.RedisError) else redis.ConnectionError(str(exc)))

    def _fail(self, pubsub: Any, error: redis.RedisError) -> None:
        if self._pubsub is pubsub:
            self._pubsub = None
        for future in [*self._confirming.values(), *(w for ws in self._waiters.values() for w in ws)]:
            if not future.done():
                future.set_exception(error)
        self._confirming.clear()
        self._waiters.clear()
        asyncio.ensure_future(pubsub.aclose())

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._pubsub is not None:
            with contextlib.suppress(Exception):
                await self._pubsub.aclose()
        self._pubsub = self._reader = None
        await self.client.aclose(close_connection_pool=True)


class AsyncStatusReader:
    """Clients are made per event loop (`LoopClient`), and with each its subscriptions and drain
    signal: a gunicorn worker has one loop, a test client may start several."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self._loop_client = LoopClient(settings, pool_wait_s=POOL_WAIT_S)
        self._client: redis.asyncio.Redis | None = None  # the current loop's, with the state below
        self._subscriptions: dict[str, Subscriptions] = {}  # by node name; one ("") on standalone
        self._gate: asyncio.Semaphore | None = None
        self.draining = asyncio.Event()  # set on SIGTERM: every long-poll answers now

    def _clients(self) -> redis.asyncio.Redis:
        client = self._loop_client.get()
        if client is not self._client:  # the first use in this event loop
            self._client = client
            self.draining = asyncio.Event()
            self._subscriptions = {}
            # redis-py's asyncio cluster fails a command at once when a node's connections are all
            # in use (no blocking pool): requests queue here instead, as they do for the pool.
            self._gate = asyncio.Semaphore(self.settings.redis_max_connections) if self.settings.cluster else None
        return client

    async def _hgetall(self, client: redis.asyncio.Redis, key: str) -> Any:
        if self._gate is None:
            return await client.hgetall(key)
        try:
            await asyncio.wait_for(self._gate.acquire(), POOL_WAIT_S)
        except asyncio.TimeoutError:
            raise redis.ConnectionError("no free Redis connection") from None
        try:
            return await client.hgetall(key)
        finally:
            self._gate.release()

    def _subscriptions_of(self, client: redis.asyncio.Redis, channel: str) -> Subscriptions:
        """The shared subscription that carries `channel`: on a cluster, that of the master that
        owns its slot now (a failover moves it to the promoted replica's)."""
        host, port, name = None, 0, ""
        if is_cluster(client):
            node = client.get_node_from_key(channel)  # type: ignore[attr-defined]
            host, port, name = node.host, node.port, node.name
        if name not in self._subscriptions:
            listener = (connect_async(self.settings, max_connections=2) if host is None
                        else connect_async_node(self.settings, host, port, max_connections=2))
            self._subscriptions[name] = Subscriptions(listener, confirm_s=self.settings.redis_socket_timeout_s,
                                                      coalesce=host is None)
        return self._subscriptions[name]

    def drain(self) -> None:
        """Wake every long-poll so it answers with the task as it is (call from any thread)."""
        loop = self._loop_client.loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self.draining.set)

    async def get(self, task_id: str) -> dict[str, str] | None:
        """The stored record of a task, or None when unknown, expired or not a task id."""
        if queue_of(task_id) is None:
            return None
        client = self._clients()
        with unavailable_on_redis_errors():
            record: Any = await self._hgetall(client, self.keys.task(task_id))
        return record or None

    async def wait(self, task_id: str, timeout_s: float) -> dict[str, str] | None:
        """The record once terminal, or as it is when `timeout_s` passes or the process drains.

        As `StatusReader.wait`: subscribe first, read the state once the subscription is
        confirmed, so a change landing in between is always seen. (No read before subscribing:
        a long-poll is nearly always for a task still running, and that read would be wasted.)"""
        if queue_of(task_id) is None:
            return None
        client = self._clients()
        task_key, channel = self.keys.task(task_id), self.keys.events(task_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        with unavailable_on_redis_errors():
            if self.draining.is_set():
                return await self.get(task_id)
            if is_cluster(client):  # the node map, which routes the subscription (once per client)
                await client.initialize()
            subscriptions = self._subscriptions_of(client, channel)
            try:
                return await self._wait(client, subscriptions, task_key, channel, deadline)
            except (redis.ConnectionError, redis.TimeoutError):
                if is_cluster(client):  # the subscriber's node may be gone: route the next join afresh
                    with contextlib.suppress(Exception):
                        await client.nodes_manager.initialize()  # type: ignore[attr-defined]
                raise

    async def _wait(self, client: redis.asyncio.Redis, subscriptions: Subscriptions, task_key: str, channel: str,
                    deadline: float) -> dict[str, str] | None:
        """Subscribed, read the state again at each message until terminal, drained or the deadline."""
        loop = asyncio.get_running_loop()
        try:
            waiter = await subscriptions.join(channel)
        except asyncio.TimeoutError:
            raise redis.TimeoutError("no subscription confirmation") from None
        try:
            while True:
                record: Any = await self._hgetall(client, task_key)
                remaining = deadline - loop.time()
                if not record or record.get("status") in TERMINAL or remaining <= 0 or self.draining.is_set():
                    return record or None
                await self._next_message(waiter, remaining)
                if waiter.done():  # a message (read the state again), or the connection's error
                    waiter.result()
                    waiter = subscriptions.rearm(channel, waiter)
        finally:
            await asyncio.shield(subscriptions.leave(channel, waiter))

    async def _next_message(self, waiter: asyncio.Future[None], timeout_s: float) -> None:
        """A message on the task's channel, the drain signal, or the timeout: whichever is first."""
        drained = asyncio.ensure_future(self.draining.wait())
        try:
            await asyncio.wait((asyncio.shield(waiter), drained), timeout=timeout_s,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            drained.cancel()

    async def close(self) -> None:
        for subscriptions in self._subscriptions.values():
            await subscriptions.close()
        if self._client is not None:
            await self._client.aclose(close_connection_pool=True)
        self._client, self._subscriptions = None, {}
