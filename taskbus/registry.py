"""Handlers by task type: `handler(payload, ctx) -> JSON-serialisable result`."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from taskbus.task import NAME_RE


@dataclasses.dataclass(frozen=True)
class Context:
    """What a handler may want to know about the attempt it runs."""

    id: str
    type: str
    queue: str
    attempt: int
    max_attempts: int
    deadline: float  # time.monotonic() value after which the attempt counts as timed out

    def remaining_s(self) -> float:
        return max(0.0, self.deadline - time.monotonic())


Handler = Callable[[Any, Context], Any]


class Registry:
    """Maps task types to handlers. `"github.*"` registers a prefix; the most specific
    registration wins (an exact type, then the longest matching prefix)."""

    def __init__(self) -> None:
        self._exact: dict[str, Handler] = {}
        self._prefixes: dict[str, Handler] = {}

    def register(self, task_type: str) -> Callable[[Handler], Handler]:
        def decorate(fn: Handler) -> Handler:
            self.add(task_type, fn)
            return fn

        return decorate

    def add(self, task_type: str, fn: Handler) -> None:
        if task_type.endswith(".*"):
            prefix = task_type[:-1]
            if not NAME_RE.fullmatch(prefix):
                raise ValueError(f"invalid task type prefix {task_type!r}")
            self._prefixes[prefix] = fn
        elif NAME_RE.fullmatch(task_type):
            self._exact[task_type] = fn
        else:
            raise ValueError(f"invalid task type {task_type!r}")

    def lookup(self, task_type: str) -> Handler | None:
        if task_type in self._exact:
            return self._exact[task_type]
        matches = [p for p in self._prefixes if task_type.startswith(p)]
        return self._prefixes[max(matches, key=len)] if matches else None

    def types(self) -> list[str]:
        return sorted(self._exact) + sorted(p + "*" for p in self._prefixes)
