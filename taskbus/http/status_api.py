"""Endpoints of the status function: read a task, or long-poll until it finishes. Never writes.

`show` serves the WSGI path (the long-poll holds its thread); `show_async` the ASGI path (the
long-poll awaits redis-py's asyncio client and holds no thread)."""

from __future__ import annotations

import math

from taskbus import openapi
from taskbus import task as tasks
from taskbus.errors import ValidationError
from taskbus.http import Service, json_response, not_found, query_value
from taskbus.http.core import Request, Response
from taskbus.settings import Settings
from taskbus.state.async_reader import AsyncStatusReader
from taskbus.state.reader import StatusReader
from taskbus.telemetry import tracing
from taskbus.telemetry.metrics import HttpMetrics


class StatusAPI:
    routes: tuple[tuple[str, str, str, tuple[str, ...] | None], ...] = (
        ("/tasks/<task_id>", "GET", "show", None),
        ("/task/<task_id>", "GET", "show", None),
        ("/healthz", "GET", "healthz", None),
        ("/openapi.json", "GET", "openapi", None),
    )
    keyed = frozenset({"show"})

    def __init__(self, settings: Settings, reader: StatusReader | None = None) -> None:
        self.settings = settings
        self.reader = reader or StatusReader(settings)
        self.async_reader = AsyncStatusReader(settings)
        self.tracer = tracing.tracer()  # long-polls get a span while tracing is on

    def admit(self, endpoint: str, args: dict[str, str]) -> None:
        """Nothing to refuse from the path alone."""

    def show(self, request: Request, task_id: str) -> Response:
        wait_s = self._checked(request, task_id)
        if wait_s <= 0:
            return _view(task_id, self.reader.get(task_id))
        if self.tracer is None:
            return _view(task_id, self.reader.wait(task_id, wait_s))
        with tracing.span(self.tracer, "wait", request.headers, _attributes(task_id, wait_s)):
            return _view(task_id, self.reader.wait(task_id, wait_s))

    async def show_async(self, request: Request, task_id: str) -> Response:
        wait_s = self._checked(request, task_id)
        reader = self.async_reader
        if wait_s <= 0:
            return _view(task_id, await reader.get(task_id))
        if self.tracer is None:
            return _view(task_id, await reader.wait(task_id, wait_s))
        with tracing.span(self.tracer, "wait", request.headers, _attributes(task_id, wait_s)):
            return _view(task_id, await reader.wait(task_id, wait_s))

    def _checked(self, request: Request, task_id: str) -> float:
        """The wait asked for; a malformed id is a 404 that never reaches a Redis key."""
        wait_s = _wait_param(request, self.settings.max_wait_s)
        if tasks.queue_of(task_id) is None:
            raise not_found(task_id)
        return wait_s

    def openapi(self, request: Request) -> Response:
        return Response(200, openapi.encoded("status", self.settings))

    def close(self) -> None:
        self.reader.close()

    def healthz(self, request: Request) -> Response:
        self.reader.ping()
        return json_response({"status": "ok"})


def _attributes(task_id: str, wait_s: float) -> dict[str, str | float]:
    """The long-poll span's: which task, how long it may wait."""
    return {"messaging.message.id": task_id, "taskbus.wait_s": wait_s}


def _view(task_id: str, record: dict[str, str] | None) -> Response:
    if record is None:
        raise not_found(task_id)
    return json_response(tasks.view(record))


def _wait_param(request: Request, max_wait_s: float) -> float:
    raw = query_value(request, "wait")
    if raw is None or raw == "":
        return 0.0
    try:
        wait_s = float(raw)
    except ValueError:
        raise ValidationError("wait", f"must be a number of seconds from 0 to {max_wait_s:g}") from None
    if not math.isfinite(wait_s) or not 0 <= wait_s <= max_wait_s:
        raise ValidationError("wait", f"must be a number of seconds from 0 to {max_wait_s:g}")
    return wait_s


def make_service(settings: Settings) -> Service:
    metrics = HttpMetrics("status", settings.prometheus_multiproc_dir)
    return Service(settings, StatusAPI(settings), threads=settings.status_threads, metrics=metrics)
