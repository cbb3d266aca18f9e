"""The producer side: record new tasks and hand them to the channel's outlet, in one round trip."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from redis.commands.core import AsyncScript

from taskbus import codec
from taskbus.channel import Outlet, Recorded, Target, open_outlet
from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.state.client import LoopClient, connect, unavailable_on_redis_errors
from taskbus.state.scripts import Scripts
from taskbus.task import DEFAULT_PRIORITY, QUEUED, TaskSpec, new_id

# WAITAOF waits this fraction of the socket timeout, so Redis answers before the socket gives up.
FSYNC_WAIT_SHARE = 0.75

# Tasks per enqueue.lua call: a batch of 1,000 is ten calls in one round trip, so no single
# script blocks Redis (and every other client) for long, and each reply arrives well within the
# socket timeout on a loaded server (one 1,000-task call once took over REDIS_SOCKET_TIMEOUT_S).
CALL_ITEMS = 100

Item = tuple[TaskSpec, str | None]  # a task and its idempotency key
Result = tuple[str, str, bool]  # id, status, created (False: an idempotent replay)


class Enqueuer:
    def __init__(self, settings: Settings, outlet: Outlet | None = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.client = connect(settings)
        self.scripts = Scripts(self.client)
        self.outlet = outlet or open_outlet(settings, self.scripts)
        self._noted: set[str] = set()  # queues this process has added to the console's index
        # The ASGI path awaits the script itself when it is the whole enqueue: Redis Streams, no
        # fsync or replica wait, standalone Redis (a cluster's redirections are the sync client's).
        fsync, replicas = settings.enqueue_fsync, settings.enqueue_replicas
        self.inline = self.outlet.alone and not (fsync or replicas or settings.cluster)
        self._loop_client = LoopClient(settings) if self.inline else None
        self._async_enqueue: AsyncScript | None = None  # enqueue.lua for asyncio clients (any loop's)

    def enqueue(
        self, spec: TaskSpec, idempotency_key: str | None = None, idempotency_ttl_s: int | None = None,
        traceparent: str | None = None,
    ) -> Result:
        """Record and publish a task; returns (id, status, created). A replayed `idempotency_key`
        returns the first task instead (created is False)."""
        return self.enqueue_many([(spec, idempotency_key)], idempotency_ttl_s, traceparent)[0]

    def enqueue_many(self, items: list[Item], idempotency_ttl_s: int | None = None,
                     traceparent: str | None = None) -> list[Result]:
        """Enqueue each (spec, idempotency key) atomically: one script call per queue and
        CALL_ITEMS tasks in the batch (all keys of a call share the queue's hash slot), pipelined
        in one round trip. `traceparent` (tracing on): the producer span's context, kept with
        every task."""
        by_queue: dict[str, list[int]] = {}
        for index, (spec, _) in enumerate(items):
            by_queue.setdefault(spec.queue, []).append(index)
        self.outlet.prepare(list(by_queue))  # before any write: a 503 here leaves no state behind
        chunks = [(queue, indexes[i:i + CALL_ITEMS]) for queue, indexes in by_queue.items()
                  for i in range(0, len(indexes), CALL_ITEMS)]
        calls = [self._call(queue, [items[i] for i in chunk], idempotency_ttl_s, traceparent)
                 for queue, chunk in chunks]
        with unavailable_on_redis_errors():
            replies = self._run(calls)
            results: list[Result] = [("", "", False)] * len(items)
            for (_, indexes), reply in zip(chunks, replies):
                for index, (found, created, status) in zip(indexes, reply):
                    results[index] = (found, status, bool(created))
            self.outlet.recorded(
                [
                    Recorded(found, self._dedupe_key(spec.queue, key, found), spec.priority)
                    for (found, status, created), (spec, key) in zip(results, items)
                    if created and status == QUEUED
                ]
            )
            self._note(list(by_queue))
            return self._with_current_status(results)

    async def enqueue_async(
        self, spec: TaskSpec, idempotency_key: str | None = None, idempotency_ttl_s: int | None = None,
        traceparent: str | None = None,
    ) -> Result:
        """`enqueue` for the event loop: when the script is the whole enqueue (`inline`), one
        awaited EVALSHA (a replay adds one read, a queue new to this process one SADD); else
        `enqueue` on a worker thread of the loop's pool."""
        if self._loop_client is None:
            return await anyio.to_thread.run_sync(self.enqueue, spec, idempotency_key, idempotency_ttl_s, traceparent)
        client = self._loop_client.get()
        keys, args = self._call(spec.queue, [(spec, idempotency_key)], idempotency_ttl_s, traceparent)
        with unavailable_on_redis_errors():
            if self._async_enqueue is None:
                self._async_enqueue = client.register_script(self.scripts.enqueue.script)
            [(found, created, status)] = await self._async_enqueue(keys=keys, args=args, client=client)
            if not created:
                status = await client.hget(self.keys.task(found), "status") or "unknown"
            if spec.queue not in self._noted:
                await client.sadd(self.keys.queue_index(), spec.queue)
                self._noted.add(spec.queue)
        return found, status, bool(created)

    def _note(self, queues: list[str]) -> None:
        """Add queues seen for the first time to the index the console lists (once per process)."""
        new = [q for q in queues if q not in self._noted]
        if new:
            self.client.sadd(self.keys.queue_index(), *new)
            self._noted.update(new)

    def _call(self, queue: str, items: list[Item], idempotency_ttl_s: int | None,
              traceparent: str | None) -> tuple[list[str], list[Any]]:
        """KEYS and ARGV of one enqueue.lua call for the tasks of one queue."""
        target = self.outlet.target(queue)
        keys: list[str] = []
        args: list[Any] = [target.kind]
        for spec, key in items:
            task_id = new_id(queue)
            dedupe = self._dedupe_key(queue, key, task_id)
            keys += [self.keys.task(task_id), self._target_key(target, queue, spec.priority), self.keys.delayed(queue),
                     dedupe, self.keys.levels(queue)]
            args += [
                task_id,
                spec.type,
                queue,
                codec.dumps(spec.payload),
                spec.max_attempts,
                repr(spec.timeout_s),
                int(spec.delay_s * 1000),
                self.settings.pending_ttl_s,
                (idempotency_ttl_s or self.settings.idempotency_ttl_s) if key is not None else "",
                ",".join(sorted(spec.defaults)),
                "" if spec.priority == DEFAULT_PRIORITY else spec.priority,
                spec.concurrency_key or "",
            ]
        if traceparent is not None:
            args.append(traceparent)
        return keys, args

    def _target_key(self, target: Target, queue: str, priority: int) -> str:
        """On Redis Streams each priority level has its stream (the default's is the queue's
        stream); Kafka's outbox takes every level (the record carries it)."""
        if target.kind != "stream" or priority == DEFAULT_PRIORITY:
            return target.key
        return self.keys.level_stream(queue, priority)

    def _run(self, calls: list[tuple[list[str], list[Any]]]) -> list[Any]:
        fsync, replicas = self.settings.enqueue_fsync, self.settings.enqueue_replicas
        if len(calls) == 1 and not fsync and not replicas:
            keys, args = calls[0]
            return [self.scripts.enqueue(keys=keys, args=args, client=self.client)]
        wait_ms = int(self.settings.redis_socket_timeout_s * 1000 * FSYNC_WAIT_SHARE)
        return self.scripts.run_many(self.scripts.enqueue, calls, fsync=fsync, wait_ms=wait_ms, replicas=replicas)

    def _dedupe_key(self, queue: str, idempotency_key: str | None, task_id: str) -> str:
        return self.keys.idempotency(queue, idempotency_key) if idempotency_key is not None else self.keys.task(task_id)

    def _with_current_status(self, results: list[Result]) -> list[Result]:
        """A replay reports the first task's current status: one more read."""
        replayed = [found for found, _, created in results if not created]
        if not replayed:
            return results
        pipe = self.client.pipeline(transaction=False)
        for found in replayed:
            pipe.hget(self.keys.task(found), "status")
        current = dict(zip(replayed, pipe.execute()))
        return [(found, status if created else current.get(found) or "unknown", created)
                for found, status, created in results]

    def close(self) -> None:
        self.outlet.close()
        self.client.close()

    def ping(self) -> None:
        """The outlet answers, and with ENQUEUE_FSYNC, Redis has an append-only file."""
        self.outlet.ping()
        if self.settings.enqueue_fsync:
            with unavailable_on_redis_errors():
                self.scripts.check_aof()
