"""JSON log lines. The library only logs; entry points call `configure()` once.

Structured fields go in `extra={"fields": {...}}`; the formatter merges
them into the line. `extra={"batch": [(message, fields), ...]}` logs several lines at once
(the worker's per-task lines: one record and one write per batch instead of per task).
Formatting is kept cheap: a worker writes two lines per task.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

import orjson


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, and the fields."""

    _second = -1
    _prefix = ""

    def format(self, record: logging.LogRecord) -> str:
        batch = record.__dict__.get("batch")
        if batch:  # several state changes logged at once: one line each, one write for all
            return self._batch(record, batch)
        line: dict[str, Any] = {
            "time": self._time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        extra = record.__dict__.get("fields")
        if extra:
            line.update(extra)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()

    def _batch(self, record: logging.LogRecord, batch: list[tuple[str, dict[str, Any]]]) -> str:
        """The lines of a batch share their time, level and logger, and mostly their message: each
        line is that common head, serialised once per message, then its own fields."""
        common = {"time": self._time(record.created), "level": record.levelname.lower(), "logger": record.name}
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


def configure(level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Skip work no line uses: the caller's frame lookup and thread/process names.
    logging.logThreads = logging.logMultiprocessing = False  # (gunicorn's own format uses the pid)
    logging._srcfile = None  # documented: "set logging._srcfile to None" to avoid findCaller
