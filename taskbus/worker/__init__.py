"""The worker engine: read deliveries from a channel, run handlers, write fenced outcomes.

Three kinds of threads, each with one job:
- the control loop (`Worker.run`) talks to the channel: read, start, heartbeat, reclaim,
  promote, time-outs, upkeep;
- `concurrency` runner threads execute handlers (`runners.RunnerPool`);
- one writer thread records outcomes in batches (`writer.OutcomeWriter`).
What is in flight between them is kept in one place (`inflight.InFlight`).
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import secrets
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import TypeVar

from taskbus.channel import Channel, Delivery, Job, OutcomeKind, Run, Skip, Verdict, open_channel
from taskbus.errors import DataLost, Unavailable
from taskbus.registry import Registry
from taskbus.settings import Settings
from taskbus.telemetry.metrics import WorkerMetrics, now_ms
from taskbus.worker.inflight import InFlight, Running
from taskbus.worker.runners import RunnerPool, log_fields
from taskbus.worker.writer import OutcomeWriter

log = logging.getLogger(__name__)

PROMOTE_AT_LEAST_EVERY_S = 1.0
CANCEL_CHECK_S = 0.25  # how soon a running handler's ctx.cancelled follows a cancel request
RECLAIM_AT_MOST_EVERY_S = 5.0
LOOP_RETRY_MAX_S = 30.0  # an outage is retried quietly: one line per step, the steps growing to this
T = TypeVar("T")


class Worker:
    def __init__(
        self,
        settings: Settings,
        registry: Registry,
        consumer: str = "",
        channel: Channel | None = None,
        stop_event: threading.Event | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        """`metrics`: None (no port to serve them on) costs the task path one `is None` test."""
        self.settings = settings
        self.registry = registry
        self.consumer = (
            consumer or settings.consumer_name or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        )
        self.channel = channel or open_channel(settings, self.consumer, registry.table())
        self.stopping = stop_event or threading.Event()
        self.inflight = InFlight(settings.concurrency)
        self.metrics = metrics
        self.writer = OutcomeWriter(settings, self.channel, self.inflight, on_scheduled=self._promote_by,
                                    metrics=metrics)
        self.runners = RunnerPool(registry, self.inflight, settle=self._settled)
        self._next_promote = self._next_heartbeat = self._next_reclaim = self._next_cancel_check = 0.0
        self.started_at = time.time()
        self.channel.describe(self.describe)
        self._opened = False
        self._problem: str | None = "starting"  # why the last turn of the loop failed; None: it worked

    def problem(self) -> str | None:
        """None while the control loop reaches the store and the channel, else why it does not
        (for a health check); on a cluster also while some queues' master is out of reach."""
        down = self.channel.outages.down()
        return self._problem or (f"Redis unavailable for queues {', '.join(down)}" if down else None)

    def describe(self) -> dict[str, object]:
        """What the console shows of this worker (announced with its heartbeat)."""
        return {"host": socket.gethostname(), "pid": os.getpid(), "queues": list(self.settings.queues),
                "concurrency": self.settings.concurrency, "in_flight": len(self.inflight),
                "started_ms": int(self.started_at * 1000), "version": _version()}

    def stop(self) -> None:
        """Ask the worker to stop reading and drain (safe from a signal handler)."""
        self.stopping.set()

    def run(self) -> int:
        """Run until `stop()`; returns the process exit code."""
        fields = {
            "consumer": self.consumer,
            "queues": list(self.settings.queues),
            "concurrency": self.settings.concurrency,
            "handlers": self.registry.types(),
        }
        log.info("worker starting", extra={"fields": fields})
        self.runners.start(self.settings.concurrency)
        self.writer.start()
        backoff = 0.1
        while not self.stopping.is_set():
            try:
                if not self._opened:
                    self.channel.open()
                    self._opened = True
                self._tick()
                self._problem = None
                backoff = 0.1
                continue
            except DataLost as exc:
                log.error("%s: recreating it", exc, extra={"fields": {"queues": list(self.settings.queues)}})
                self._opened = False
                continue
            except Unavailable as exc:
                self._problem = str(exc)[:200]
                self._next_reclaim = 0.0  # a lost reply may have delivered entries to us: look soon
                fields = {"error": self._problem, "retry_in_s": backoff}
                log.warning("store or channel unavailable, retrying", extra={"fields": fields})
            except Exception as exc:  # noqa: BLE001 - the loop must outlive any single failure
                self._problem = f"{type(exc).__name__}: {str(exc)[:200]}"
                log.exception("worker loop error, retrying")
            self.stopping.wait(backoff)
            backoff = min(backoff * 2, LOOP_RETRY_MAX_S)
        return self._drain()

    # -- control loop -------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        queues = self.settings.queues
        if now >= self._next_promote:
            waits = self._each(queues, self.channel.promote_due)
            self._next_promote = now + min([w / 1000 for w in waits if w >= 0] + [PROMOTE_AT_LEAST_EVERY_S])
        self.runners.expire(now)
        if now >= self._next_heartbeat:
            self._heartbeat()
            self._next_heartbeat = now + self.settings.lease_s / 3
        if self.inflight.free() > 0 and now >= self._next_reclaim:
            self._each(queues, lambda q: self._dispatch(self.channel.reclaim(q, self.inflight.free(),
                                                                              self.inflight.entries())))
            self._next_reclaim = now + min(self.settings.lease_s / 2, RECLAIM_AT_MOST_EVERY_S)
        if now >= self._next_cancel_check and len(self.inflight):
            self._check_cancels(now)
        self.channel.maintain()
        next_duty = min(self._next_promote, self._next_heartbeat, self.inflight.next_deadline())
        if len(self.inflight):
            next_duty = min(next_duty, self._next_cancel_check)
        wait_ms = max(1, min(self.settings.block_ms, int((next_duty - time.monotonic()) * 1000)))
        free = self.inflight.free()
        if free <= 0:
            self.channel.pause()
            self.inflight.wait(lambda: self.inflight.free() > 0 or self.stopping.is_set(), timeout=wait_ms / 1000)
            return
        self._dispatch(self.channel.read(free, wait_ms))

    def _each(self, queues: Iterable[str], step: Callable[[str], T]) -> list[T]:
        """`step` of each queue; on a cluster a queue whose master is down is skipped, and backed
        off alone (`Channel.outages`); elsewhere its error ends the turn of the loop."""
        done = []
        for queue in self.channel.outages.live(queues):
            with self.channel.outages.guard(queue):
                done.append(step(queue))
        return done

    def _check_cancels(self, now: float) -> None:
        """Set ctx.cancelled on the handlers of running tasks that have a cancel request."""
        self._next_cancel_check = now + CANCEL_CHECK_S
        requests = self._each(self.inflight.queues(), self.channel.cancel_requests)
        for requested in requests:
            told = self.inflight.cancel(requested, self.settings.cancel_grace_s, now)
            for r in told:
                log.info("cancel requested: the handler is told (ctx.cancelled)",
                         extra={"fields": log_fields(r.job, grace_s=self.settings.cancel_grace_s)})

    def _dispatch(self, deliveries: list[Delivery]) -> None:
        by_queue: dict[str, list[Delivery]] = defaultdict(list)
        for d in deliveries:
            if d.task_id is None:
                log.error("malformed entry dead-lettered", extra={"fields": {"queue": d.queue, "entry": d.entry}})
                self.channel.reject(d, "the entry names no well-formed task id of its queue")
                if self.metrics is not None:
                    self.metrics.dead_lettered(d.queue)
            else:
                by_queue[d.queue].append(d)
        for queue, batch in by_queue.items():
            now = time.monotonic()
            verdicts: list[Verdict] = []  # none if the queue's master is down (cluster): its entries get reclaimed
            with self.channel.outages.guard(queue):
                verdicts = self.channel.start(queue, batch)
            jobs: list[Job] = []
            for verdict in verdicts:
                if isinstance(verdict, Run):
                    jobs.append(verdict.job)
                else:
                    _log_skip(verdict)
                    if verdict.kind == "dead" and self.metrics is not None:
                        self.metrics.dead_lettered(queue)
                    elif verdict.kind == "throttled" and verdict.reason == "rate":
                        self._promote_by(now)  # it waits in the delayed zset: promote by its time
            started = self.inflight.add_all(jobs, now)
            if started:
                if self.metrics is not None:
                    self.metrics.started([r.job for r in started], now_ms())
                lines = [("task running", log_fields(r.job, status="running")) for r in started]
                log.info("task running", extra={"batch": lines})
                self.runners.submit(started)

    def _settled(self, running: Running, kind: OutcomeKind, body: bytes) -> None:
        if self.metrics is not None:
            self.metrics.settled(running.job, time.monotonic() - running.started)
        self.writer.put(running, kind, body)

    def _promote_by(self, when: float) -> None:
        self._next_promote = min(self._next_promote, when)

    def _heartbeat(self) -> None:
        by_queue: dict[str, list[Job]] = defaultdict(list)
        for job in self.inflight.jobs():
            by_queue[job.queue].append(job)
        for queue, lost in self._each(list(by_queue), lambda q: (q, self.channel.heartbeat(q, by_queue[q]))):
            for entry in lost:
                if self.inflight.is_running(entry):  # else it just finished: its outcome acknowledged the entry
                    log.warning(
                        "lease lost (reclaimed by another worker?)", extra={"fields": {"queue": queue, "entry": entry}}
                    )

    # -- shutdown -------------------------------------------------------------------------

    def _drain(self) -> int:
        self.writer.give_up_at = time.monotonic() + self.settings.grace_s
        fields = {"in_flight": len(self.inflight), "grace_s": self.settings.grace_s}
        log.info("worker stopping: draining", extra={"fields": fields})
        self.inflight.wait(lambda: len(self.inflight) == 0, timeout=self.settings.grace_s)
        left = self.inflight.unsettled()
        for job in left:
            try:
                self.channel.release(job.queue, [job])
            except Unavailable:
                pass  # the lease expires on its own; another worker reclaims it then
        try:
            self.channel.close(drained=not left)
        except Exception:  # noqa: BLE001 - uncommitted work is redone by the next owner, fenced
            log.exception("could not close the channel cleanly")
        log.info("worker stopped", extra={"fields": {"handed_back": len(left)}})
        return 0


def _version() -> str:
    try:
        return importlib.metadata.version("taskbus")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _log_skip(verdict: Skip) -> None:
    d = verdict.delivery
    if verdict.kind == "dead":
        fields = {"task_id": d.task_id, "queue": d.queue, "status": "failed", "reason": verdict.reason}
        log.error("task dead-lettered", extra={"fields": fields})
    elif verdict.kind == "done":
        log.info("redelivery of a finished task acknowledged", extra={"fields": {"task_id": d.task_id}})
    elif verdict.kind == "deferred":
        fields = {"task_id": d.task_id, "queue": d.queue}
        log.info("no handler here for the task's type: left for a worker that has one", extra={"fields": fields})
    elif verdict.kind == "paused":
        log.debug("queue paused: task left queued", extra={"fields": {"task_id": d.task_id, "queue": d.queue}})
    elif verdict.kind == "throttled":
        fields = {"task_id": d.task_id, "queue": d.queue, "reason": verdict.reason}
        log.debug("task throttled: it waits for its limit", extra={"fields": fields})
    elif verdict.kind == "busy":
        log.debug("task held by another worker; asking again later", extra={"fields": {"task_id": d.task_id}})
    else:
        log.warning("delivery no longer ours", extra={"fields": {"task_id": d.task_id, "entry": d.entry}})
