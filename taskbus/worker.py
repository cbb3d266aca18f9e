"""The worker engine: read deliveries, run handlers on a thread pool, write fenced outcomes.

Three kinds of threads, each with one job:
- the control loop (the caller of `run`) talks to the stream: read, start, heartbeat,
  reclaim, promote, time-outs;
- `concurrency` runner threads execute handlers;
- one writer thread records outcomes in batches (one script call for all that are ready).
A handler that raises, hangs or returns garbage costs an attempt, never the worker or the task.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import queue as queues
import random
import secrets
import socket
import threading
import time
import traceback
from collections import defaultdict
from typing import Any

import redis

from taskbus import codec
from taskbus.channel import Channel, Delivery, Job
from taskbus.errors import Unavailable
from taskbus.kafka_channel import KafkaChannel
from taskbus.registry import Context, Registry
from taskbus.settings import Settings
from taskbus.store import REDIS_ERRORS

log = logging.getLogger(__name__)

MAX_RESULT_BYTES = 1024 * 1024
WRITE_BATCH = 256
MAX_UNWRITTEN = 1024  # outcomes waiting for the writer before reading pauses
RETRYABLE = (*REDIS_ERRORS, Unavailable)  # Redis or the Kafka broker unreachable: wait and retry


@dataclasses.dataclass
class Running:
    job: Job
    deadline: float
    started: float
    settled: bool = False  # an outcome was produced (by the runner, or by the watchdog on time-out)
    abandoned: bool = False  # timed out: its runner thread retires once the handler returns


class Worker:
    def __init__(self, settings: Settings, registry: Registry, consumer: str = "") -> None:
        self.settings = settings
        self.registry = registry
        self.consumer = (
            consumer or settings.consumer_name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        self.channel: Channel | KafkaChannel = (
            KafkaChannel(settings, self.consumer) if settings.channel == "kafka" else Channel(settings, self.consumer)
        )
        self.stopping = threading.Event()
        self._cond = threading.Condition()
        self._running: dict[str, Running] = {}  # by stream entry id, until the outcome is written
        self._jobs: queues.SimpleQueue[Running | None] = queues.SimpleQueue()
        self._outcomes: queues.SimpleQueue[tuple[Running, str, bytes]] = queues.SimpleQueue()
        self._next_promote = self._next_heartbeat = self._next_reclaim = 0.0
        self._drain_deadline = float("inf")
        self._groups_ready = False
        self._group_lost = False
        self._abandoned = 0
        self._busy = 0  # handlers running now (deliveries started and not yet settled)
        self._orphans_possible = False
        self._next_prune = time.monotonic() + 600

    def stop(self) -> None:
        """Ask the worker to stop reading and drain (safe from a signal handler)."""
        self.stopping.set()

    def run(self) -> int:
        """Run until `stop()`; returns the process exit code."""
        log.info(
            "worker starting",
            extra={
                "fields": {
                    "consumer": self.consumer,
                    "queues": list(self.settings.queues),
                    "concurrency": self.settings.concurrency,
                    "handlers": self.registry.types(),
                }
            },
        )
        for _ in range(self.settings.concurrency):
            self._start_runner()
        threading.Thread(target=self._writer, daemon=True, name="writer").start()
        backoff = 0.1
        while not self.stopping.is_set():
            try:
                if not self._groups_ready:
                    self.channel.ensure_groups(lost=self._group_lost)
                    self._groups_ready = True
                self._tick()
                backoff = 0.1
                continue
            except RETRYABLE as exc:
                self._orphans_possible = True  # a lost reply may have delivered entries to us
                log.warning(
                    "kafka unavailable, retrying" if isinstance(exc, Unavailable) else "redis unavailable, retrying",
                    extra={"fields": {"error": type(exc).__name__, "detail": str(exc)[:200], "retry_in_s": backoff}},
                )
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    log.error(
                        "consumer group or stream missing (Redis lost its data?): recreating it",
                        extra={"fields": {"queues": list(self.settings.queues)}},
                    )
                    self._groups_ready = False
                    self._group_lost = True
                    continue
                log.exception("redis refused a command, retrying")
            except Exception:  # noqa: BLE001 - the loop must outlive any single failure
                log.exception("worker loop error, retrying")
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, 2.0)
        return self._drain()

    # -- control loop -------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_promote:
            waits = [self.channel.promote_due(q) for q in self.settings.queues]
            self._next_promote = now + min([w / 1000 for w in waits if w >= 0] + [1.0])
        self._expire_timed_out(now)
        if now >= self._next_heartbeat:
            self._heartbeat()
            self._next_heartbeat = now + self.settings.lease_s / 3
        if self._orphans_possible and self._free() > 0:
            with self._cond:
                known = set(self._running)
            for queue in self.settings.queues:
                self._dispatch(self.channel.own_orphans(queue, known, self._free()))
            self._orphans_possible = False
        if self._free() > 0 and now >= self._next_reclaim:
            for queue in self.settings.queues:
                self._dispatch(self.channel.reclaim(queue, self._free()))
            self._next_reclaim = now + min(self.settings.lease_s / 2, 5.0)
        if now >= self._next_prune:
            for queue in self.settings.queues:
                self.channel.prune_consumers(queue)
            self._next_prune = now + 600
        next_duty = min(self._next_promote, self._next_heartbeat, self._next_deadline())
        wait_ms = max(1, min(self.settings.block_ms, int((next_duty - time.monotonic()) * 1000)))
        free = self._free()
        if free <= 0:
            self.channel.at_capacity()
            with self._cond:
                self._cond.wait_for(lambda: self._free() > 0 or self.stopping.is_set(), timeout=wait_ms / 1000)
            return
        self._dispatch(self.channel.read(free, wait_ms))

    def _free(self) -> int:
        """Slots for new deliveries: a slot frees when its handler returns, not when the outcome
        is written, so reading overlaps the writer's round trip; unwritten outcomes are capped."""
        return min(self.settings.concurrency - self._busy, MAX_UNWRITTEN - len(self._running))

    def _next_deadline(self) -> float:
        with self._cond:
            return min((r.deadline for r in self._running.values() if not r.settled), default=float("inf"))

    def _dispatch(self, deliveries: list[Delivery]) -> None:
        by_queue: dict[str, list[Delivery]] = defaultdict(list)
        for d in deliveries:
            if d.task_id is None:
                log.error(
                    "malformed entry dead-lettered", extra={"fields": {"queue": d.queue, "entry": d.entry}}
                )
                self.channel.drop(d, "the entry names no well-formed task id of its queue")
            else:
                by_queue[d.queue].append(d)
        for queue, batch in by_queue.items():
            started: list[Running] = []
            for d, verdict in self.channel.start(queue, batch):
                kind = verdict[0]
                if kind == "run":
                    started.append(self._track(d, verdict))
                elif kind == "dead":
                    log.error(
                        "task dead-lettered",
                        extra={
                            "fields": {"task_id": d.task_id, "queue": queue, "status": "failed", "reason": verdict[1]}
                        },
                    )
                elif kind == "done":
                    log.info("redelivery of a finished task acknowledged", extra={"fields": {"task_id": d.task_id}})
                elif kind == "busy":
                    log.debug(
                        "task held by another worker; asking again later", extra={"fields": {"task_id": d.task_id}}
                    )
                else:
                    log.warning("delivery no longer ours", extra={"fields": {"task_id": d.task_id, "entry": d.entry}})
            if started:
                log.info(
                    "task running",
                    extra={"batch": [("task running", _fields(r.job, status="running")) for r in started]},
                )
                for running in started:
                    self._jobs.put(running)

    def _track(self, d: Delivery, verdict: list[Any]) -> Running:
        """Record a started attempt (it holds a slot until its handler returns)."""
        _, task_type, payload, attempt, max_attempts, timeout_s = verdict
        assert d.task_id is not None
        job = Job(
            d.queue,
            d.entry,
            d.task_id,
            task_type,
            codec.loads(payload),
            int(attempt),
            int(max_attempts),
            float(timeout_s),
        )
        now = time.monotonic()
        running = Running(job, deadline=now + job.timeout_s, started=now)
        with self._cond:
            self._running[job.entry] = running
            self._busy += 1
        return running

    # -- runners: one attempt each ----------------------------------------------------------

    def _start_runner(self) -> None:
        threading.Thread(target=self._runner, daemon=True, name="runner").start()

    def _runner(self) -> None:
        while True:
            running = self._jobs.get()
            if running is None:
                return
            outcome, body = self._execute(running.job, running.deadline)
            with self._cond:
                if running.settled:  # the watchdog already counted this attempt as timed out
                    self._abandoned -= 1
                    return  # a replacement runner took this thread's place
                running.settled = True
                self._busy -= 1
                self._cond.notify_all()
            self._outcomes.put((running, outcome, body))

    def _execute(self, job: Job, deadline: float) -> tuple[str, bytes]:
        handler = self.registry.lookup(job.type)
        if handler is None:
            error = {"type": "UnknownTaskType", "message": f"no handler for task type {job.type!r}", "traceback": None}
            return "failed", codec.dumps(error)  # retrying cannot help
        ctx = Context(job.task_id, job.type, job.queue, job.attempt, job.max_attempts, deadline)
        try:
            body = codec.dumps(handler(job.payload, ctx))
            if len(body) > MAX_RESULT_BYTES:
                raise ValueError(f"result is {len(body)} bytes, over the {MAX_RESULT_BYTES} limit")
            return "succeeded", body
        except BaseException as exc:  # noqa: BLE001 - a handler must never take the worker down
            return self._failure(job, exc, traceback.format_exc())

    def _failure(self, job: Job, exc: BaseException, tb: str | None) -> tuple[str, bytes]:
        error = {"type": type(exc).__name__, "message": str(exc)[:2000], "traceback": tb[-8000:] if tb else None}
        return ("retry" if job.attempt < job.max_attempts else "failed"), codec.dumps(error)

    def _expire_timed_out(self, now: float) -> None:
        with self._cond:
            late = [r for r in self._running.values() if not r.settled and r.deadline <= now]
            for r in late:
                r.settled = r.abandoned = True
                self._abandoned += 1
                self._busy -= 1
        for r in late:
            self._start_runner()  # the stuck thread keeps its handler; capacity is restored
            exc = TimeoutError(f"task ran past its timeout of {r.job.timeout_s} s")
            log.warning(
                "task timed out; its thread is abandoned", extra={"fields": _fields(r.job, abandoned=self._abandoned)}
            )
            self._outcomes.put((r, *self._failure(r.job, exc, None)))

    # -- writer: outcomes in batches --------------------------------------------------------

    def _writer(self) -> None:
        while True:
            batch = [self._outcomes.get()]
            while len(batch) < WRITE_BATCH:
                try:
                    batch.append(self._outcomes.get_nowait())
                except queues.Empty:
                    break
            by_queue: dict[str, list[tuple[Running, str, bytes]]] = defaultdict(list)
            for item in batch:
                by_queue[item[0].job.queue].append(item)
            for queue, items in by_queue.items():
                try:
                    self._write(queue, items)
                except Exception:  # noqa: BLE001 - the writer must outlive any one batch
                    log.exception(
                        "could not record outcomes; their tasks will be reclaimed",
                        extra={"fields": {"queue": queue, "tasks": len(items)}},
                    )

    def _write(self, queue: str, items: list[tuple[Running, str, bytes]]) -> None:
        """Record outcomes, retrying through Redis outages: a computed result is not dropped."""
        outcomes = [(r.job, outcome, body, self._delay_ms(r.job, outcome)) for r, outcome, body in items]
        backoff = 0.05
        written: list[str | None] | None = None
        try:
            while written is None:
                try:
                    written = self.channel.finish(queue, outcomes)
                except RETRYABLE as exc:
                    if time.monotonic() > self._drain_deadline:
                        log.error(
                            "giving up writing outcomes at shutdown; the tasks will be reclaimed",
                            extra={"fields": {"queue": queue, "tasks": len(items), "error": type(exc).__name__}},
                        )
                        return
                    log.warning(
                        "store or channel unavailable writing outcomes, retrying",
                        extra={"fields": {"queue": queue, "tasks": len(items), "error": type(exc).__name__}},
                    )
                    time.sleep(backoff)  # this thread only waits for Redis; nothing to synchronise with
                    backoff = min(backoff * 2, 2.0)
        finally:
            with self._cond:
                for r, _, _ in items:
                    self._running.pop(r.job.entry, None)
                self._cond.notify_all()
        now = time.monotonic()
        lines: list[tuple[str, dict[str, Any]]] = []
        for (r, outcome, _), (_, _, _, delay_ms), status in zip(items, outcomes, written):
            fields = _fields(r.job, duration_ms=round((now - r.started) * 1000, 1))
            if status is None:
                log.warning(
                    "lease lost: outcome refused, another worker owns the task",
                    extra={"fields": {**fields, "outcome": outcome}},
                )
            else:
                if status == "scheduled":
                    self._next_promote = min(self._next_promote, now + delay_ms / 1000)
                lines.append((f"task {status}", {**fields, "status": status}))
        if lines:
            log.info("task outcomes", extra={"batch": lines})

    def _delay_ms(self, job: Job, outcome: str) -> int:
        """Retry backoff: exponential with full jitter, capped."""
        if outcome != "retry":
            return 0
        cap = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (job.attempt - 1))
        return int(random.uniform(0, cap) * 1000)

    def _heartbeat(self) -> None:
        with self._cond:  # settled entries too: their outcome may still be waiting for the writer
            jobs = [r.job for r in self._running.values()]
        by_queue: dict[str, list[Job]] = defaultdict(list)
        for job in jobs:
            by_queue[job.queue].append(job)
        for queue, batch in by_queue.items():
            for entry in self.channel.heartbeat(queue, batch):
                with self._cond:
                    running = self._running.get(entry)
                    still_running = running is not None and not running.settled
                if still_running:  # else it just finished: its outcome acknowledged the entry
                    log.warning(
                        "lease lost (reclaimed by another worker?)", extra={"fields": {"queue": queue, "entry": entry}}
                    )

    # -- shutdown -------------------------------------------------------------------------

    def _drain(self) -> int:
        self._drain_deadline = time.monotonic() + self.settings.grace_s
        log.info(
            "worker stopping: draining",
            extra={"fields": {"in_flight": len(self._running), "grace_s": self.settings.grace_s}},
        )
        with self._cond:
            self._cond.wait_for(lambda: not self._running, timeout=self.settings.grace_s)
            left = [r.job for r in self._running.values() if not r.settled]
        for job in left:
            try:
                self.channel.release(job.queue, [job])
            except RETRYABLE:
                pass  # the lease expires on its own; another worker reclaims it then
        if not left:
            for queue in self.settings.queues:
                try:
                    self.channel.prune_consumers(queue, myself=True)
                except (redis.RedisError, *REDIS_ERRORS):
                    break  # nothing is lost: an empty consumer entry stays until a later prune
        try:
            self.channel.close()  # Kafka: commit what finished, leave the group
        except Exception:  # noqa: BLE001 - uncommitted records are redone by the next owner, fenced
            log.exception("could not close the channel cleanly")
        log.info("worker stopped", extra={"fields": {"handed_back": len(left)}})
        return 0


def _fields(job: Job, **extra: Any) -> dict[str, Any]:
    return {"task_id": job.task_id, "type": job.type, "queue": job.queue, "attempt": job.attempt, **extra}
