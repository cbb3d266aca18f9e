"""JSON log lines. The library only logs; entry points call `configure()` once.

Structured fields go in `extra={"fields": {...}}`; the formatter merges
them into the line. `extra={"batch": [(message, fields), ...]}` logs several lines at once
(the worker's per-task lines: one record and one write per batch instead of per task).
Formatting is kept cheap: a worker writes two lines per task.

Field names are Cloud Logging's (`severity`, `message`, `time`), which other backends read as
well; while a span is active (tracing on: `telemetry.tracing` adds the context source), a line
also carries the trace fields Cloud Logging joins it to its trace by, and `trace_id`/`span_id`.
"""

from __future__ import annotations

import contextvars
import logging
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

Context = Callable[[], "dict[str, Any] | None"]

# The task a handler runs for (task_id, type, queue, attempt), set by the worker around the
# handler call: the handler's own log lines carry them, with no logger adapter to pass around.
TASK: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("taskbus_task", default=None)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), severity, logger, message, the trace fields
    while a span is active, and the record's own fields."""

    _second = -1
    _prefix = ""
    context: Context | None = None  # the active span's fields; None while tracing is off

    def format(self, record: logging.LogRecord) -> str:
        batch = record.__dict__.get("batch")
        if batch:  # several state changes logged at once: one line each, one write for all
            return self._batch(record, batch)
        line: dict[str, Any] = {
            "time": self._time(record.created),
            "severity": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if self.context is not None and (traced := self.context()):
            line.update(traced)
        task = TASK.get()
        if task is not None:
            line.update(task)
        extra = record.__dict__.get("fields")
        if extra:
            line.update(extra)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()

    def _batch(self, record: logging.LogRecord, batch: list[tuple[str, dict[str, Any]]]) -> str:
        """The lines of a batch share their time, severity, logger and trace fields, and mostly
        their message: each line is that common head, serialised once per message, then its own
        fields."""
        common = {"time": self._time(record.created), "severity": record.levelname, "logger": record.name}
        if self.context is not None and (traced := self.context()):
            common.update(traced)
        heads: dict[str, bytes] = {}
        lines = []
        for message, values in batch:
            if not values or not values.keys().isdisjoint(common) or "message" in values:
                lines.append(orjson.dumps({**common, "message": message, **values}, default=str))
                continue
            head = heads.get(message)
            if head is None:
                head = heads[message] = orjson.dumps({**common, "message": message})[:-1] + b","
            lines.append(head + orjson.dumps(values, default=str)[1:])
        return b"\n".join(lines).decode()

    def _time(self, created: float) -> str:
        second = int(created)
        if second != self._second:  # formatting a date costs more than the rest of the line
            self._second, self._prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{int((created - second) * 1000):03d}Z"


def add_context(source: Context) -> None:
    """Have every line carry what `source` returns (the active span's fields), when it is not None."""
    JsonFormatter.context = staticmethod(source)


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Skip work no line uses: the caller's frame lookup and thread/process names.
    logging.logThreads = logging.logMultiprocessing = False  # (gunicorn's own format uses the pid)
    logging._srcfile = None  # documented: "set logging._srcfile to None" to avoid findCaller
