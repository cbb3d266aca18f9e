"""Handlers by task type: `handler(payload, ctx) -> JSON-serialisable result`."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

from taskbus.errors import Cancelled
from taskbus.limits import Limits
from taskbus.schedules.model import Schedule
from taskbus.task import NAME_RE

MAX_ATTEMPTS_LIMIT = 100
TIMEOUT_LIMIT_S = 86400.0


@dataclasses.dataclass(frozen=True)
class Context:
    """What a handler may want to know about the attempt it runs."""

    id: str
    type: str
    queue: str
    attempt: int
    max_attempts: int
    deadline: float  # time.monotonic() value after which the attempt counts as timed out
    # Set once an operator or the application cancels the task: stop soon (CANCEL_GRACE_S at most).
    cancelled: threading.Event = dataclasses.field(default_factory=threading.Event)

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())

    def raise_if_cancelled(self) -> None:
        """Raise `Cancelled` if the task has a cancel request: the attempt ends, the task is `cancelled`."""
        if self.cancelled.is_set():
            raise Cancelled("the task was cancelled")


Handler = Callable[[Any, Context], Any]


@dataclasses.dataclass(frozen=True)
class Registration:
    handler: Handler
    max_attempts: int | None = None  # for tasks of this type whose request gives none
    timeout_s: float | None = None
    limits: Limits | None = None  # concurrency and rate limits (taskbus.limits)


class Registry:
    """Maps task types to handlers. `"github.*"` registers a prefix; the most specific
    registration wins (an exact type, then the longest matching prefix)."""

    def __init__(self) -> None:
        self._exact: dict[str, Registration] = {}
        self._prefixes: dict[str, Registration] = {}
        self.schedules: list[Schedule] = []  # every worker syncs these into Redis at start

    def register(
        self, task_type: str, *, max_attempts: int | None = None, timeout_s: float | None = None,
        concurrency: int | None = None, concurrency_key: str | None = None, rate: str | None = None,
        burst: int | None = None,
    ) -> Callable[[Handler], Handler]:
        """Decorator. `max_attempts` and `timeout_s` are this type's defaults, used when the
        request that enqueued a task gives none. `concurrency` (per value of the payload field
        `concurrency_key`, or of the request's `concurrency_key`), `rate` ("10/s", "/m", "5/h")
        and `burst`: flow-control limits shared by every worker (README "Concurrency and rate limits")."""

        limits = Limits.of(task_type, concurrency, concurrency_key, rate, burst)  # a bad one fails here

        def decorate(fn: Handler) -> Handler:
            self.add(task_type, fn, max_attempts=max_attempts, timeout_s=timeout_s, limits=limits)
            return fn

        return decorate

    def add(self, task_type: str, fn: Handler, *, max_attempts: int | None = None,
            timeout_s: float | None = None, limits: Limits | None = None) -> None:
        if max_attempts is not None and not (isinstance(max_attempts, int) and 1 <= max_attempts <= MAX_ATTEMPTS_LIMIT):
            raise ValueError(f"max_attempts of {task_type!r} must be an integer from 1 to {MAX_ATTEMPTS_LIMIT}")
        if timeout_s is not None and not 0 < timeout_s <= TIMEOUT_LIMIT_S:
            raise ValueError(f"timeout_s of {task_type!r} must be > 0 and <= {TIMEOUT_LIMIT_S:g}")
        registration = Registration(fn, max_attempts, None if timeout_s is None else float(timeout_s), limits)
        if task_type.endswith(".*"):
            prefix = task_type[:-1]
            if not NAME_RE.fullmatch(prefix):
                raise ValueError(f"invalid task type prefix {task_type!r}")
            self._prefixes[prefix] = registration
        elif NAME_RE.fullmatch(task_type):
            self._exact[task_type] = registration
        else:
            raise ValueError(f"invalid task type {task_type!r}")

    def schedule(
        self, name: str, task_type: str, *, cron: str | None = None, every_s: int | None = None, tz: str = "UTC",
        payload: Any = None, queue: str = "default", misfire: str = "once", max_catchup: int = 10,
        overlap: bool = True,
    ) -> Schedule:
        """Enqueue `task_type` at every slot of `cron` or every `every_s` seconds (see
        `taskbus.schedules.Schedule`); a bad declaration raises ValueError naming the schedule."""
        schedule = Schedule(name, task_type, cron=cron, every_s=every_s, tz=tz, payload=payload, queue=queue,
                            misfire=misfire, max_catchup=max_catchup, overlap=overlap)
        if any(s.name == name and s.queue == queue for s in self.schedules):
            raise ValueError(f"schedule {name!r}: declared twice on queue {queue!r}")
        self.schedules.append(schedule)
        return schedule

    def registration(self, task_type: str) -> Registration | None:
        if task_type in self._exact:
            return self._exact[task_type]
        matches = [p for p in self._prefixes if task_type.startswith(p)]
        return self._prefixes[max(matches, key=len)] if matches else None

    def lookup(self, task_type: str) -> Handler | None:
        found = self.registration(task_type)
        return found.handler if found else None

    def types(self) -> list[str]:
        return sorted(self._exact) + sorted(p + "*" for p in self._prefixes)

    def table(self) -> HandlerTable:
        """What the worker's scripts (and other workers) are told about these handlers: which
        types they take and their defaults, 0 meaning none (see lua/lib.lua `handler_of`)."""

        def row(r: Registration) -> list[float | str]:
            defaults: list[float | str] = [r.max_attempts or 0, r.timeout_s or 0]
            return defaults + r.limits.row() if r.limits else defaults  # unlimited: no extra columns

        return {
            "exact": {t: row(r) for t, r in self._exact.items()},
            "prefix": {p: row(r) for p, r in self._prefixes.items()},
        }


HandlerTable = dict[str, dict[str, list[float | str]]]
ANY_TYPE: HandlerTable = {"exact": {}, "prefix": {"": [0, 0]}}  # takes every type, sets no default
