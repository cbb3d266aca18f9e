"""Runner threads: each runs one attempt at a time and hands its outcome to the writer. A
handler that raises, hangs or returns garbage costs an attempt, never the worker or the task.

Started attempts wait in one queue that every runner takes from. A batch wakes one runner, not
one per attempt: a runner that finishes an attempt takes the next one itself, so handlers that
return at once run back to back on one thread, with no hand-off between them. An attempt never
waits long behind a slow handler: once every busy runner has been inside its current handler
for `SPREAD_AFTER_S`, a watcher thread wakes one idle runner per waiting attempt (the control
loop starts no more attempts than there are runners, so there is always one to wake).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from taskbus import codec, logs
from taskbus.channel import Job, OutcomeKind
from taskbus.errors import Cancelled, PermanentError
from taskbus.registry import Context, Registry
from taskbus.telemetry import tracing
from taskbus.worker.inflight import InFlight, Running

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger(__name__)

MAX_RESULT_BYTES = 1024 * 1024
MAX_MESSAGE_CHARS = 2000
MAX_TRACEBACK_CHARS = 8000
SPREAD_AFTER_S = 0.002  # waiting attempts get runners of their own once every busy handler ran this long

Settle = Callable[[Running, OutcomeKind, bytes], None]


class RunnerPool:
    def __init__(self, registry: Registry, inflight: InFlight, settle: Settle) -> None:
        self.registry = registry
        self.inflight = inflight
        self.settle = settle  # where outcomes go: the writer
        self.tracer = tracing.tracer()  # None while tracing is off: attempts then run untraced
        self._attempt = self._execute if self.tracer is None else self._traced  # chosen once, not per task
        lock = threading.Lock()
        self._work = threading.Condition(lock)  # idle runners wait here
        self._watch = threading.Condition(lock)  # the watcher waits here
        self._ready: collections.deque[Running] = collections.deque()  # started, not yet taken
        self._began: dict[int, float] = {}  # per runner thread: when its current handler began
        self._idle = 0  # runners waiting for work, not yet woken
        self._looking = 0  # runners awake outside a handler (woken, or between two attempts)
        self._watcher_parked = False  # the watcher waits for work to appear (no timeout)

    def start(self, threads: int) -> None:
        threading.Thread(target=self._watcher, daemon=True, name="runner-watcher").start()
        for _ in range(threads):
            self._start_runner()

    def submit(self, batch: list[Running]) -> None:
        """Queue started attempts; wakes one runner unless one is already looking for work."""
        with self._work:
            self._ready.extend(batch)
            if self._looking == 0:
                self._wake(1)
            if self._watcher_parked:
                self._watcher_parked = False
                self._watch.notify()

    def _wake(self, n: int) -> None:
        """Wake up to `n` idle runners (the lock held); they count as looking from now on."""
        n = min(n, self._idle)
        if n > 0:
            self._idle -= n
            self._looking += n
            self._work.notify(n)

    def _start_runner(self) -> None:
        with self._work:
            self._looking += 1
        threading.Thread(target=self._runner, daemon=True, name="runner").start()

    def _runner(self) -> None:
        me = threading.get_ident()
        began = self._began
        while True:
            with self._work:
                while not self._ready:
                    self._looking -= 1
                    self._idle += 1
                    self._work.wait()  # whoever wakes us counted us as looking again
                running = self._ready.popleft()
                self._looking -= 1
                began[me] = time.monotonic()
            if running.settled:  # timed out while it waited: its attempt is already failed or retried
                with self._work:
                    del began[me]
                self.inflight.settle(running)
                return  # the watchdog started a replacement for this thread
            kind, body = self._attempt(running)
            with self._work:
                self._looking += 1
                del began[me]
            if not self.inflight.settle(running):
                with self._work:
                    self._looking -= 1
                return  # the watchdog counted this attempt as timed out; a replacement took our place
            self.settle(running, kind, body)

    def _watcher(self) -> None:
        """While attempts wait and no runner is free to take them, wake idle runners for them once
        every busy runner has been inside its current handler for SPREAD_AFTER_S; sleeps while
        nothing waits."""
        with self._watch:
            while True:
                if not self._ready:
                    self._watcher_parked = True
                    self._watch.wait()
                    continue
                if self._looking > 0 or not self._began:
                    self._watch.wait(SPREAD_AFTER_S)  # a runner is about to take them
                    continue
                due = max(self._began.values()) + SPREAD_AFTER_S
                now = time.monotonic()
                if now < due:
                    self._watch.wait(due - now)
                    continue
                self._wake(len(self._ready))
                self._watch.wait(SPREAD_AFTER_S)

    def _traced(self, running: Running) -> tuple[OutcomeKind, bytes]:
        """`_execute` inside the attempt's `process` span: the handler's own spans are its children."""
        assert self.tracer is not None
        with tracing.processing(self.tracer, running.job) as span:
            outcome = self._execute(running, span)
            tracing.settled(span, outcome[0])
            return outcome

    def _execute(self, running: Running, span: Span | None = None) -> tuple[OutcomeKind, bytes]:
        job = running.job
        handler = self.registry.lookup(job.type)
        if handler is None:
            # the start script defers types this worker has no handler for: only a registry
            # changed under a running worker gets here
            return "failed", error_json("UnknownTaskType", f"no handler for task type {job.type!r}")
        ctx = Context(job.task_id, job.type, job.queue, job.attempt, job.max_attempts, running.deadline,
                      running.cancelled)
        task = logs.TASK.set(log_fields(job))  # the handler's own lines carry the task's fields
        try:
            result = handler(job.payload, ctx)
        except Cancelled as exc:
            return "cancelled", error_json("Cancelled", str(exc) or "the handler stopped on a cancel request")
        except BaseException as exc:  # noqa: BLE001 - a handler must never take the worker down
            if span is not None:
                tracing.failed(span, exc)
            return failure(job, exc, traceback.format_exc())
        finally:
            logs.TASK.reset(task)
        return encode_result(result)

    def expire(self, now: float) -> None:
        """Time out attempts past their deadline: the stuck thread keeps its handler, a new
        runner restores the capacity, and the attempt fails (or retries) now. A cancelled
        attempt whose handler outlived CANCEL_GRACE_S ends cancelled the same way."""
        for r in self.inflight.expire(now):
            self._start_runner()
            if r.cancel_deadline <= now and r.cancel_deadline <= r.deadline:
                log.warning("cancelled task still running after CANCEL_GRACE_S; its thread is abandoned",
                            extra={"fields": log_fields(r.job, abandoned=self.inflight.abandoned)})
                self.settle(r, "cancelled", error_json("Cancelled", "the handler outlived CANCEL_GRACE_S"))
                continue
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
