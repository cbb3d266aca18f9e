"""Redis connections and the task-state operations of the HTTP functions.

Only this module and `channel` talk to Redis. Every Redis failure leaves here as
`Unavailable`, so callers never see a redis-py exception.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from taskbus import codec
from taskbus.errors import DataLost, Unavailable
from taskbus.kafka import Publisher, task_record
from taskbus.keys import SCRIPT_NAMES, Keys, load_script
from taskbus.settings import Settings
from taskbus.task import TERMINAL, TaskSpec, new_id, queue_of

log = logging.getLogger(__name__)

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError)


def connect(
    settings: Settings, *, socket_timeout_s: float | None = None, max_connections: int | None = None
) -> redis.Redis:
    """A client with bounded timeouts and a small retry budget (redis-py's default retries 10 times)."""
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections or settings.redis_max_connections,
        timeout=settings.redis_socket_timeout_s,  # wait for a free connection at most this long
        socket_timeout=socket_timeout_s or settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), settings.redis_retries),
        decode_responses=True,
        protocol=2,
        driver_info=None,  # no CLIENT SETINFO at connect: two round trips fewer that could hang
    )
    return redis.Redis(connection_pool=pool)


@contextlib.contextmanager
def unavailable_on_redis_errors() -> Iterator[None]:
    try:
        yield
    except REDIS_ERRORS as exc:
        raise Unavailable(f"Redis unavailable: {type(exc).__name__}") from exc
    except redis.ConnectionError as exc:  # pool exhausted raises ConnectionError too
        raise Unavailable(str(exc)) from exc


class Scripts:
    """The Lua scripts registered on one client (EVALSHA with automatic fallback to EVAL)."""

    def __init__(self, client: redis.Redis) -> None:
        for name in SCRIPT_NAMES:
            setattr(self, name, client.register_script(load_script(name)))

    enqueue: Any
    start: Any
    finish: Any
    heartbeat: Any
    due: Any
    promote: Any
    drop: Any
    kstart: Any
    klease: Any
    republish: Any
    abort: Any


class Store:
    """Task state as the HTTP functions see it: enqueue, read, wait for a change, health."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.client = connect(settings)
        # Long-polls block inside Redis: they need their own socket timeout and pool.
        self.blocking = connect(settings, socket_timeout_s=settings.max_wait_s + 2)
        self.scripts = Scripts(self.client)
        self.kafka = settings.channel == "kafka"
        self._publisher: Publisher | None = None
        self._publisher_lock = threading.Lock()

    @property
    def publisher(self) -> Publisher:
        """The Kafka producer, made on first use (after gunicorn forked; the status function never needs one)."""
        with self._publisher_lock:
            if self._publisher is None:
                self._publisher = Publisher(self.settings)
            return self._publisher

    def enqueue(
        self, spec: TaskSpec, idempotency_key: str | None = None, idempotency_ttl_s: int | None = None
    ) -> tuple[str, str, bool]:
        """Record and publish a task in one round trip; returns (id, status, created).
        A replayed `idempotency_key` returns the first task instead (created is False)."""
        return self.enqueue_many([(spec, idempotency_key)], idempotency_ttl_s)[0]

    def enqueue_many(
        self, items: list[tuple[TaskSpec, str | None]], idempotency_ttl_s: int | None = None
    ) -> list[tuple[str, str, bool]]:
        """Enqueue each (spec, idempotency key) atomically: one script call per queue in the
        batch (all keys of a call share the queue's hash slot), pipelined in one round trip."""
        by_queue: dict[str, list[int]] = {}
        for index, (spec, _) in enumerate(items):
            by_queue.setdefault(spec.queue, []).append(index)
        if self.kafka:
            self.publisher.ensure(list(by_queue))  # topics first: a 503 here leaves no state behind
        calls = []
        for queue, indexes in by_queue.items():
            keys: list[str] = []
            args: list[Any] = ["outbox" if self.kafka else "stream"]
            stream = self.keys.outbox(queue) if self.kafka else self.keys.stream(queue)
            delayed = self.keys.delayed(queue)
            for index in indexes:
                spec, key = items[index]
                task_id = new_id(queue)
                task_key = self.keys.task(task_id)
                keys += [task_key, stream, delayed, self.keys.idempotency(queue, key) if key is not None else task_key]
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
                ]
            calls.append((keys, args))
        with unavailable_on_redis_errors():
            if len(calls) == 1 and not self.settings.enqueue_fsync:
                replies = [self.scripts.enqueue(keys=calls[0][0], args=calls[0][1], client=self.client)]
            else:
                replies = self._evalsha_many(self.scripts.enqueue, calls, fsync=self.settings.enqueue_fsync)
            results: list[tuple[str, str, bool]] = [("", "", False)] * len(items)
            for indexes, reply in zip(by_queue.values(), replies):
                for index, (found, created, status) in zip(indexes, reply):
                    results[index] = (found, status, bool(created))
            if self.kafka:
                self._publish(
                    [
                        (found, self.keys.idempotency(spec.queue, key) if key is not None else self.keys.task(found))
                        for (found, status, created), (spec, key) in zip(results, items)
                        if created and status == "queued"
                    ]
                )
            replayed = [found for found, _, created in results if not created]
            if replayed:  # a replay reports the first task's current status: one more read
                pipe = self.client.pipeline(transaction=False)
                for found in replayed:
                    pipe.hget(self.keys.task(found), "status")
                current = dict(zip(replayed, pipe.execute()))
                results = [
                    (found, status if created else current.get(found) or "unknown", created)
                    for found, status, created in results
                ]
        return results

    def _publish(self, tasks: list[tuple[str, str]]) -> None:
        """Kafka channel: produce the records of tasks just recorded, given as (id, idempotency
        key or the task's own key), and return once the broker acknowledged them. If it did not,
        the tasks are undone (a 503 leaves no task claiming to be queued); if this process dies
        first, the worker's outbox sweep publishes them."""
        if not tasks:
            return
        try:
            self.publisher.publish([task_record(self.settings, queue_of(t) or "", t) for t, _ in tasks])
        except Unavailable:
            pipe = self.client.pipeline(transaction=False)
            for task_id, idem in tasks:
                keys = [self.keys.task(task_id), self.keys.outbox(queue_of(task_id) or ""), idem]
                self.scripts.abort(keys=keys, args=[task_id], client=pipe)
            pipe.execute()
            raise
        with contextlib.suppress(*REDIS_ERRORS):  # else the sweep publishes them once more: harmless
            mark_published(self.settings, self.scripts, self.keys, [t for t, _ in tasks], self.client)

    def _evalsha_many(self, script: Any, calls: list[tuple[list[str], list[Any]]], fsync: bool = False) -> list[Any]:
        """Pipelined EVALSHA calls in one round trip. (redis-py's pipelined Script objects add a
        SCRIPT EXISTS round trip to every execute; here the script is loaded only when missing.)
        `fsync`: end the pipeline with WAITAOF, which must follow the writes on their connection,
        and return only once Redis has fsynced them to its append-only file."""
        wait_ms = int(self.settings.redis_socket_timeout_s * 750)  # an answer before the socket times out
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            if fsync:
                pipe.execute_command("WAITAOF", 1, 0, wait_ms)
            try:
                replies = list(pipe.execute())
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                self.client.script_load(script.script)  # after a Redis restart or SCRIPT FLUSH
                continue
            except redis.ResponseError as exc:
                raise _no_aof(exc) from exc
            if not fsync:
                return replies
            if replies[-1][0] < 1:  # recorded, but not known to be on disk: ambiguous, like a timeout
                raise Unavailable(f"Redis did not fsync the task within {wait_ms} ms")
            return replies[:-1]
        raise AssertionError("unreachable")

    def get(self, task_id: str) -> dict[str, str] | None:
        """The stored record of a task, or None when unknown, expired or not a task id."""
        if queue_of(task_id) is None:
            return None
        with unavailable_on_redis_errors():
            record = self.client.hgetall(self.keys.task(task_id))
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
            record = self.client.hgetall(task_key)
            if not record or record.get("status") in TERMINAL:
                return record or None
            pubsub = self.blocking.pubsub()
            try:
                pubsub.ssubscribe(channel)
                if pubsub.get_sharded_message(timeout=self.settings.redis_socket_timeout_s) is None:
                    raise redis.TimeoutError("no subscription confirmation")
                while True:
                    record = self.client.hgetall(task_key)
                    remaining = deadline - time.monotonic()
                    if not record or record.get("status") in TERMINAL or remaining <= 0:
                        return record or None
                    pubsub.get_sharded_message(timeout=remaining)
            finally:
                pubsub.close()

    def ping(self, channel: bool = False) -> None:
        """Redis answers, and no worker has flagged a lost consumer group on our queues; with
        `channel`, the Kafka broker answers too (CHANNEL=kafka)."""
        if channel and self.kafka:
            self.publisher.ping()
        with unavailable_on_redis_errors():
            flags = self.client.mget([self.keys.data_lost(q) for q in self.settings.queues])
            if channel and self.settings.enqueue_fsync:
                try:  # a fresh connection has written nothing: answers at once, or says AOF is off
                    self.client.execute_command("WAITAOF", 1, 0, 1)
                except redis.ResponseError as exc:
                    raise _no_aof(exc) from exc
        lost = [q for q, flag in zip(self.settings.queues, flags) if flag]
        if lost:
            raise DataLost(
                f"Redis lost the stream or consumer group of queue(s) {', '.join(lost)} "
                "(restarted without persistence?); tasks queued before were lost"
            )


def _no_aof(exc: redis.ResponseError) -> Exception:
    """WAITAOF's refusal on a Redis without an append-only file: a deployment error, said loudly."""
    if "appendonly" not in str(exc):
        return exc
    log.error("ENQUEUE_FSYNC is set but Redis runs without appendonly: every enqueue is refused")
    return Unavailable("ENQUEUE_FSYNC is set but Redis has no append-only file")


def mark_published(settings: Settings, scripts: Scripts, keys: Keys, task_ids: list[str], client: redis.Redis) -> None:
    """Kafka channel: the broker acknowledged these tasks' records. They stay in the outbox until
    a worker starts them, due again KAFKA_REDELIVER_S from now (see lua/published.lua)."""
    by_queue: dict[str, list[str]] = {}
    for task_id in task_ids:
        by_queue.setdefault(queue_of(task_id) or "", []).append(task_id)
    later_ms = int((settings.kafka_redeliver_s - settings.kafka_outbox_age_s) * 1000)
    for queue, ids in by_queue.items():
        scripts.published(keys=[keys.outbox(queue)], args=[later_ms, *ids], client=client)
