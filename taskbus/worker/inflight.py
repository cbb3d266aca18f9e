"""The attempts a worker has in flight, from start until their outcome is written: one lock
(a Condition) for the control loop, the runners and the writer."""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable

from taskbus.channel import Job

MAX_UNWRITTEN = 1024  # outcomes waiting for the writer before reading pauses


@dataclasses.dataclass
class Running:
    job: Job
    deadline: float
    started: float
    settled: bool = False  # an outcome was produced (by the runner, or by the watchdog on time-out)
    abandoned: bool = False  # timed out: its runner thread retires once the handler returns
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)  # the handler's ctx.cancelled
    cancel_deadline: float = float("inf")  # a cancel request's grace ends: the attempt ends cancelled

    def due(self) -> float:
        """When the watchdog settles it if the handler has not returned: timeout or cancel grace."""
        return min(self.deadline, self.cancel_deadline)


class InFlight:
    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.cond = threading.Condition()
        self._running: dict[str, Running] = {}  # by entry, until the outcome is written
        self._busy = 0  # handlers running now (started and not yet settled)
        self.abandoned = 0  # threads left running a timed-out handler
        # A lower bound of every unsettled attempt's `due()`: the control loop asks for expiries and
        # the next deadline on every turn, and this answers both without a scan until one is near.
        self._due_from = float("inf")

    def __len__(self) -> int:
        return len(self._running)

    def add_all(self, jobs: list[Job], now: float) -> list[Running]:
        """A started batch, under one lock: each attempt holds a slot until its handler returns."""
        started = [Running(job, deadline=now + job.timeout_s, started=now) for job in jobs]
        with self.cond:
            for running in started:
                self._running[running.job.entry] = running
                self._due_from = min(self._due_from, running.deadline)
            self._busy += len(started)
        return started

    def settle(self, running: Running) -> bool:
        """The handler returned. False when the watchdog already counted it as timed out (the
        thread then retires: a replacement took its place)."""
        with self.cond:
            if running.settled:
                self.abandoned -= 1
                return False
            running.settled = True
            self._busy -= 1
            self.cond.notify_all()
            return True

    def expire(self, now: float) -> list[Running]:
        """Settle, as abandoned, the attempts past their deadline."""
        with self.cond:
            if now < self._due_from:
                return []
            late = [r for r in self._running.values() if not r.settled and r.due() <= now]
            for r in late:
                r.settled = r.abandoned = True
                self.abandoned += 1
                self._busy -= 1
            self._due_from = self._scan_due()
        return late

    def _scan_due(self) -> float:
        """The earliest `due()` of the unsettled attempts (the lock held)."""
        return min((r.due() for r in self._running.values() if not r.settled), default=float("inf"))

    def free(self) -> int:
        """Slots for new deliveries: a slot frees when its handler returns, not when the outcome
        is written, so reading overlaps the writer's round trip; unwritten outcomes are capped."""
        return min(self.concurrency - self._busy, MAX_UNWRITTEN - len(self._running))

    def next_deadline(self) -> float:
        """When `expire` may next find something (at the earliest: settled attempts are only
        forgotten by the scan `expire` does once that time comes)."""
        with self.cond:
            return self._due_from

    def entries(self) -> set[str]:
        with self.cond:
            return set(self._running)

    def jobs(self) -> list[Job]:
        """Every job not yet written, settled ones too (their outcome may still be waiting)."""
        with self.cond:
            return [r.job for r in self._running.values()]

    def is_running(self, entry: str) -> bool:
        with self.cond:
            running = self._running.get(entry)
            return running is not None and not running.settled

    def written(self, entries: list[str]) -> None:
        with self.cond:
            for entry in entries:
                self._running.pop(entry, None)
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> None:
        with self.cond:
            self.cond.wait_for(predicate, timeout=timeout)

    def cancel(self, task_ids: set[str], grace_s: float, now: float) -> list[Running]:
        """Tell the handlers of these tasks that they are cancelled (once each); their attempts
        end cancelled when the handler returns, or `grace_s` from now. Returns those told now."""
        with self.cond:
            told = [r for r in self._running.values()
                    if not r.settled and r.job.task_id in task_ids and not r.cancelled.is_set()]
            for r in told:
                r.cancelled.set()
                r.cancel_deadline = now + grace_s
                self._due_from = min(self._due_from, r.cancel_deadline)
            return told

    def queues(self) -> set[str]:
        """Queues with attempts running now."""
        with self.cond:
            return {r.job.queue for r in self._running.values() if not r.settled}

    def unsettled(self) -> list[Job]:
        with self.cond:
            return [r.job for r in self._running.values() if not r.settled]
