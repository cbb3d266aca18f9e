"""The writer thread: records outcomes in batches (one fenced script call per queue for all
that are ready), retrying through outages so a computed result is not dropped."""

from __future__ import annotations

import logging
import queue as queues
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from taskbus import codec
from taskbus.channel import Channel, Outcome, OutcomeKind
from taskbus.errors import Unavailable
from taskbus.settings import Settings
from taskbus.telemetry.metrics import WorkerMetrics
from taskbus.worker.inflight import InFlight, Running
from taskbus.worker.runners import log_fields

log = logging.getLogger(__name__)

WRITE_BATCH = 256
RETRY_MAX_S = 2.0

Item = tuple[Running, OutcomeKind, bytes]


class OutcomeWriter:
    def __init__(self, settings: Settings, channel: Channel, inflight: InFlight,
                 on_scheduled: Callable[[float], None], metrics: WorkerMetrics | None = None) -> None:
        self.settings = settings
        self.channel = channel
        self.inflight = inflight
        self.on_scheduled = on_scheduled  # a retry is due at this monotonic time: promote then
        self.metrics = metrics
        self.give_up_at = float("inf")  # set at shutdown: stop retrying after the grace period
        self._outcomes: queues.SimpleQueue[Item] = queues.SimpleQueue()
        # On a cluster, a thread per queue: one whose master is down retries alone while the
        # other queues' outcomes are written (each queue lives on one master).
        self._lanes: dict[str, queues.SimpleQueue[Item]] = (
            {q: queues.SimpleQueue() for q in settings.queues} if channel.outages.per_queue else {})

    def put(self, running: Running, kind: OutcomeKind, body: bytes) -> None:
        self._lanes.get(running.job.queue, self._outcomes).put((running, kind, body))

    def start(self) -> None:
        for name, lane in self._lanes.items() or [("", self._outcomes)]:
            threading.Thread(target=self._loop, args=(lane,), daemon=True, name=f"writer{name and '-'}{name}").start()

    def _loop(self, outcomes: queues.SimpleQueue[Item]) -> None:
        while True:
            batch = [outcomes.get()]
            while len(batch) < WRITE_BATCH:
                try:
                    batch.append(outcomes.get_nowait())
                except queues.Empty:
                    break
            by_queue: dict[str, list[Item]] = defaultdict(list)
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

    def _write(self, queue: str, items: list[Item]) -> None:
        outcomes = [Outcome(r.job, kind, body, self.delay_ms(r.job.attempt, kind)) for r, kind, body in items]
        try:
            written = self._finish(queue, outcomes)
        finally:
            self.inflight.written([r.job.entry for r, _, _ in items])
        if written is not None:
            self._log(items, outcomes, written)

    def _finish(self, queue: str, outcomes: list[Outcome]) -> list[str | None] | None:
        """`channel.finish`, retried through outages; None when given up at shutdown."""
        backoff = 0.05
        while True:
            try:
                return self.channel.finish(queue, outcomes)
            except Unavailable as exc:
                fields = {"queue": queue, "tasks": len(outcomes), "error": str(exc)[:200]}
                if time.monotonic() > self.give_up_at:
                    log.error("giving up writing outcomes at shutdown; the tasks will be reclaimed",
                              extra={"fields": fields})
                    return None
                log.warning("store or channel unavailable writing outcomes, retrying", extra={"fields": fields})
                time.sleep(backoff)  # this thread only waits for the store; nothing to synchronise with
                backoff = min(backoff * 2, RETRY_MAX_S)

    def _log(self, items: list[Item], outcomes: list[Outcome], written: list[str | None]) -> None:
        now = time.monotonic()
        lines: list[tuple[str, dict[str, Any]]] = []
        for (r, kind, _), outcome, status in zip(items, outcomes, written):
            fields = log_fields(r.job, duration_ms=round((now - r.started) * 1000, 1))
            if status is None:
                log.warning(
                    "lease lost: outcome refused, another worker owns the task",
                    extra={"fields": {**fields, "outcome": kind}},
                )
                continue
            if self.metrics is not None:  # `abandoned`: the watchdog settled it, a time-out (or a cancel's grace)
                self.metrics.finished(r.job, status, r.abandoned)
            if status == "scheduled":
                self.on_scheduled(now + outcome.delay_ms / 1000)
            if status == "succeeded":
                lines.append(("task succeeded", {**fields, "status": status}))
            elif status == "cancelled":
                lines.append(("task cancelled", {**fields, "status": status}))
            elif status == "scheduled":
                retry = {**fields, **_error_fields(outcome.body), "retry_in_s": outcome.delay_ms / 1000}
                log.warning("task attempt failed; retrying", extra={"fields": retry})
            else:
                log.error("task failed", extra={"fields": {**fields, **_error_fields(outcome.body), "status": status}})
        if lines:
            log.info("task outcomes", extra={"batch": lines})

    def delay_ms(self, attempt: int, kind: OutcomeKind) -> int:
        """Retry backoff: exponential with full jitter, capped."""
        if kind != "retry":
            return 0
        cap = min(self.settings.backoff_max_s, self.settings.backoff_base_s * 2 ** (attempt - 1))
        return int(random.uniform(0, cap) * 1000)


def _error_fields(body: bytes) -> dict[str, Any]:
    """The error's type and message for a log line (never the payload; the traceback stays in
    the task record)."""
    try:
        error = codec.loads(body)
    except ValueError:
        return {}
    if not isinstance(error, dict):
        return {}
    return {"error_type": error.get("type"), "error": str(error.get("message", ""))[:500]}
