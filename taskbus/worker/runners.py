"""Runner threads: each runs one attempt at a time and hands its outcome to the writer. A
handler that raises, hangs or returns garbage costs an attempt, never the worker or the task."""

from __future__ import annotations

import logging
import queue as queues
import threading
import traceback
from collections.abc import Callable
from typing import Any

from taskbus import codec
from taskbus.channel import Job, OutcomeKind
from taskbus.errors import PermanentError
from taskbus.registry import Context, Registry
from taskbus.worker.inflight import InFlight, Running

log = logging.getLogger(__name__)

MAX_RESULT_BYTES = 1024 * 1024
MAX_MESSAGE_CHARS = 2000
MAX_TRACEBACK_CHARS = 8000

Settle = Callable[[Running, OutcomeKind, bytes], None]


class RunnerPool:
    def __init__(self, registry: Registry, inflight: InFlight, settle: Settle) -> None:
        self.registry = registry
        self.inflight = inflight
        self.settle = settle  # where outcomes go: the writer
        self._jobs: queues.SimpleQueue[Running | None] = queues.SimpleQueue()

    def start(self, threads: int) -> None:
        for _ in range(threads):
            self._start_runner()

    def submit(self, running: Running) -> None:
        self._jobs.put(running)

    def _start_runner(self) -> None:
        threading.Thread(target=self._runner, daemon=True, name="runner").start()

    def _runner(self) -> None:
        while True:
            running = self._jobs.get()
            if running is None:
                return
            kind, body = self._execute(running.job, running.deadline)
            if not self.inflight.settle(running):
                return  # the watchdog counted this attempt as timed out; a replacement took our place
            self.settle(running, kind, body)

    def _execute(self, job: Job, deadline: float) -> tuple[OutcomeKind, bytes]:
        handler = self.registry.lookup(job.type)
        if handler is None:
            # the start script defers types this worker has no handler for: only a registry
            # changed under a running worker gets here
            return "failed", error_json("UnknownTaskType", f"no handler for task type {job.type!r}")
        ctx = Context(job.task_id, job.type, job.queue, job.attempt, job.max_attempts, deadline)
        try:
            result = handler(job.payload, ctx)
        except BaseException as exc:  # noqa: BLE001 - a handler must never take the worker down
            return failure(job, exc, traceback.format_exc())
        return encode_result(result)

    def expire(self, now: float) -> None:
        """Time out attempts past their deadline: the stuck thread keeps its handler, a new
        runner restores the capacity, and the attempt fails (or retries) now."""
        for r in self.inflight.expire(now):
            self._start_runner()
            exc = TimeoutError(f"task ran past its timeout of {r.job.timeout_s} s")
            log.warning(
                "task timed out; its thread is abandoned",
                extra={"fields": log_fields(r.job, abandoned=self.inflight.abandoned)},
            )
            self.settle(r, *failure(r.job, exc, None))


def encode_result(result: Any) -> tuple[OutcomeKind, bytes]:
    """The handler returned: its result as JSON. One that cannot be stored fails the task at
    once, since running the handler again would repeat its side effects for the same result."""
    try:
        body = codec.dumps(result)
    except (TypeError, ValueError) as exc:  # orjson: not serialisable, or an integer out of range
        return "failed", error_json("UnencodableResult", f"the result is not JSON-serialisable: {exc}")
    if len(body) > MAX_RESULT_BYTES:
        message = f"the result is {len(body)} bytes, over the {MAX_RESULT_BYTES} byte limit"
        return "failed", error_json("ResultTooLarge", message)
    return "succeeded", body


def failure(job: Job, exc: BaseException, tb: str | None) -> tuple[OutcomeKind, bytes]:
    """A retry while attempts remain (and the handler did not raise `PermanentError`), else
    a failure; the error as JSON, cut to size."""
    retry = job.attempt < job.max_attempts and not isinstance(exc, PermanentError)
    return ("retry" if retry else "failed"), error_json(type(exc).__name__, str(exc), tb)


def error_json(kind: str, message: str, tb: str | None = None) -> bytes:
    error = {
        "type": kind,
        "message": message[:MAX_MESSAGE_CHARS],
        "traceback": tb[-MAX_TRACEBACK_CHARS:] if tb else None,
    }
    return codec.dumps(error)


def log_fields(job: Job, **extra: Any) -> dict[str, Any]:
    return {"task_id": job.task_id, "type": job.type, "queue": job.queue, "attempt": job.attempt, **extra}
