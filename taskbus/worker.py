"""The worker engine: read deliveries, run handlers in threads, write fenced outcomes.

One control thread talks to the stream (read, start, heartbeat, reclaim, promote, time-outs);
each attempt runs in its own daemon thread, which writes its own outcome. A handler that
raises, hangs or returns garbage costs an attempt, never the worker or the task.
"""

from __future__ import annotations

import dataclasses
import logging
import os
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
from taskbus.registry import Context, Registry
from taskbus.settings import Settings
from taskbus.store import REDIS_ERRORS

log = logging.getLogger(__name__)

MAX_RESULT_BYTES = 1024 * 1024


@dataclasses.dataclass
class Running:
    job: Job
    deadline: float
    started: float
    settled: bool = False  # set, under the lock, by whoever records the outcome first


class Worker:
    def __init__(self, settings: Settings, registry: Registry, consumer: str = "") -> None:
        self.settings = settings
        self.registry = registry
        self.consumer = consumer or settings.consumer_name or \
            f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.channel = Channel(settings, self.consumer)
        self.stopping = threading.Event()
        self._cond = threading.Condition()
        self._running: dict[str, Running] = {}
        self._abandoned = 0
        self._next_promote = self._next_heartbeat = self._next_reclaim = 0.0
        self._drain_deadline = float("inf")
        self._groups_ready = False

    def stop(self) -> None:
        """Ask the worker to stop reading and drain (safe from a signal handler)."""
        self.stopping.set()

    def run(self) -> int:
        """Run until `stop()`; returns the process exit code."""
        log.info("worker starting", extra={"consumer": self.consumer, "queues": list(self.settings.queues),
                                             "concurrency": self.settings.concurrency,
                                             "handlers": self.registry.types()})
        backoff = 0.1
        while not self.stopping.is_set():
            try:
                if not self._groups_ready:
                    self.channel.ensure_groups()
                    self._groups_ready = True
                self._tick()
                backoff = 0.1
                continue
            except REDIS_ERRORS as exc:
                log.warning("redis unavailable, retrying", extra={"error": type(exc).__name__, "retry_in_s": backoff})
            except redis.ResponseError as exc:
                if "NOGROUP" in str(exc):
                    log.error("consumer group or stream missing (Redis lost its data?): recreating it",
                              extra={"queues": list(self.settings.queues)})
                    self._groups_ready = False
                    continue
                log.exception("redis refused a command, retrying")
            except Exception:  # noqa: BLE001 - the loop must outlive any single failure
                log.exception("worker loop error, retrying")
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, 2.0)
        return self._drain()

    def _tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_promote:
            waits = [self.channel.promote_due(q) for q in self.settings.queues]
            self._next_promote = now + min([w / 1000 for w in waits if w >= 0] + [1.0])
        self._expire_timed_out(now)
        if now >= self._next_heartbeat:
            self._heartbeat()
            self._next_heartbeat = now + self.settings.lease_s / 3
        if self._free() > 0 and now >= self._next_reclaim:
            for queue in self.settings.queues:
                self._dispatch(self.channel.reclaim(queue, self._free()))
            self._next_reclaim = now + min(self.settings.lease_s / 2, 5.0)
        next_duty = min(self._next_promote, self._next_heartbeat, self._next_deadline())
        wait_ms = max(1, min(self.settings.block_ms, int((next_duty - time.monotonic()) * 1000)))
        free = self._free()
        if free <= 0:
            with self._cond:
                self._cond.wait_for(lambda: self._free() > 0 or self.stopping.is_set(), timeout=wait_ms / 1000)
            return
        self._dispatch(self.channel.read(free, wait_ms))

    def _free(self) -> int:
        return self.settings.concurrency - len(self._running)

    def _next_deadline(self) -> float:
        with self._cond:
            return min((r.deadline for r in self._running.values()), default=float("inf"))

    def _dispatch(self, deliveries: list[Delivery]) -> None:
        by_queue: dict[str, list[Delivery]] = defaultdict(list)
        for d in deliveries:
            if d.task_id is None:
                log.error("malformed stream entry dead-lettered", extra={"queue": d.queue, "entry": d.entry})
                self.channel.drop(d, "stream entry has no well-formed task id")
            else:
                by_queue[d.queue].append(d)
        for queue, batch in by_queue.items():
            for d, verdict in self.channel.start(queue, batch):
                kind = verdict[0]
                if kind == "run":
                    self._launch(d, verdict)
                elif kind == "dead":
                    log.error("task dead-lettered", extra={"task_id": d.task_id, "queue": queue, "outcome": "failed",
                                                           "reason": verdict[1]})
                elif kind == "done":
                    log.info("redelivery of a finished task acknowledged", extra={"task_id": d.task_id})
                else:
                    log.warning("delivery no longer ours", extra={"task_id": d.task_id, "entry": d.entry})

    def _launch(self, d: Delivery, verdict: list[Any]) -> None:
        _, task_type, payload, attempt, max_attempts, timeout_s = verdict
        assert d.task_id is not None
        job = Job(d.queue, d.entry, d.task_id, task_type, codec.loads(payload), int(attempt),
                  int(max_attempts), float(timeout_s))
        now = time.monotonic()
        running = Running(job, deadline=now + job.timeout_s, started=now)
        with self._cond:
            self._running[job.entry] = running
        log.info("task running", extra=_fields(job, status="running"))
        threading.Thread(target=self._execute, args=(running,), daemon=True, name=f"task-{job.entry}").start()

    # -- one attempt ----------------------------------------------------------------------

    def _execute(self, running: Running) -> None:
        job = running.job
        handler = self.registry.lookup(job.type)
        if handler is None:
            error = {"type": "UnknownTaskType", "message": f"no handler for task type {job.type!r}", "traceback": None}
            outcome, body = "failed", codec.dumps(error)  # retrying cannot help
        else:
            ctx = Context(job.task_id, job.type, job.queue, job.attempt, job.max_attempts, running.deadline)
            try:
                body = codec.dumps(handler(job.payload, ctx))
                if len(body) > MAX_RESULT_BYTES:
                    raise ValueError(f"result is {len(body)} bytes, over the {MAX_RESULT_BYTES} limit")
                outcome = "succeeded"
            except BaseException as exc:  # noqa: BLE001 - a handler must never take the worker down
                outcome, body = self._failure(job, exc, traceback.format_exc())
        with self._cond:
            if running.settled:  # the watchdog already counted this attempt as timed out
                self._abandoned -= 1
                return
            running.settled = True
        self._record(running, outcome, body)

    def _failure(self, job: Job, exc: BaseException, tb: str | None) -> tuple[str, bytes]:
        error = {"type": type(exc).__name__, "message": str(exc)[:2000], "traceback": tb[-8000:] if tb else None}
        return ("retry" if job.attempt < job.max_attempts else "failed"), codec.dumps(error)

    def _record(self, running: Running, outcome: str, body: bytes) -> None:
        """Write the outcome, retrying through Redis outages: a computed result is not dropped."""
        job = running.job
        delay_ms = int(self._backoff_s(job.attempt) * 1000) if outcome == "retry" else 0
        backoff = 0.05
        written: str | None = None
        try:
            while True:
                try:
                    written = self.channel.finish(job, outcome, body, delay_ms)
                    break
                except REDIS_ERRORS as exc:
                    if time.monotonic() > self._drain_deadline:
                        log.error("giving up writing an outcome at shutdown; the task will be reclaimed",
                                  extra=_fields(job, error=type(exc).__name__))
                        return
                    log.warning("redis unavailable writing an outcome, retrying", extra=_fields(job, error=type(exc).__name__))
                    time.sleep(backoff)  # this thread only waits for Redis; nothing to synchronise with
                    backoff = min(backoff * 2, 2.0)
        finally:
            with self._cond:
                self._running.pop(job.entry, None)
                self._cond.notify_all()
        duration_ms = round((time.monotonic() - running.started) * 1000, 1)
        if written is None:
            log.warning("lease lost: outcome refused, another worker owns the task",
                        extra=_fields(job, outcome=outcome, duration_ms=duration_ms))
            return
        if outcome == "retry":
            self._next_promote = min(self._next_promote, time.monotonic() + delay_ms / 1000)
        log.info("task %s", written, extra=_fields(job, status=written, duration_ms=duration_ms))

    def _backoff_s(self, attempt: int) -> float:
        """Exponential backoff with full jitter, capped."""
        cap = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (attempt - 1))
        return random.uniform(0, cap)

    def _expire_timed_out(self, now: float) -> None:
        with self._cond:
            late = [r for r in self._running.values() if not r.settled and r.deadline <= now]
            for r in late:
                r.settled = True
                self._abandoned += 1
        for r in late:
            exc = TimeoutError(f"task ran past its timeout of {r.job.timeout_s} s")
            outcome, body = self._failure(r.job, exc, None)
            log.warning("task timed out; its thread is abandoned", extra=_fields(r.job, abandoned=self._abandoned))
            self._record(r, outcome, body)

    def _heartbeat(self) -> None:
        with self._cond:
            entries = [(r.job.queue, r.job.entry) for r in self._running.values() if not r.settled]
        by_queue: dict[str, list[str]] = defaultdict(list)
        for queue, entry in entries:
            by_queue[queue].append(entry)
        for queue, batch in by_queue.items():
            for entry in self.channel.heartbeat(queue, batch):
                log.warning("lease lost (reclaimed by another worker?)", extra={"queue": queue, "entry": entry})

    # -- shutdown -------------------------------------------------------------------------

    def _drain(self) -> int:
        self._drain_deadline = time.monotonic() + self.settings.grace_s
        log.info("worker stopping: draining", extra={"in_flight": len(self._running), "grace_s": self.settings.grace_s})
        with self._cond:
            self._cond.wait_for(lambda: not self._running, timeout=self.settings.grace_s)
            left = [r.job for r in self._running.values() if not r.settled]
        for job in left:
            try:
                self.channel.release(job.queue, [job.entry])
            except REDIS_ERRORS:
                pass  # the lease expires on its own; another worker reclaims it then
        log.info("worker stopped", extra={"handed_back": len(left)})
        return 0


def _fields(job: Job, **extra: Any) -> dict[str, Any]:
    return {"task_id": job.task_id, "type": job.type, "queue": job.queue, "attempt": job.attempt, **extra}
