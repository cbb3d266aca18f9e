"""Endpoints of the status function: read a task, or long-poll until it finishes. Never writes."""

from __future__ import annotations

import math

import flask

from taskbus import openapi
from taskbus import task as tasks
from taskbus.errors import ValidationError
from taskbus.http import Service, json_response, not_found
from taskbus.settings import Settings
from taskbus.state.reader import StatusReader


class StatusAPI:
    routes: tuple[tuple[str, str, str], ...] = (
        ("/tasks/<task_id>", "GET", "show"),
        ("/task/<task_id>", "GET", "show"),
        ("/healthz", "GET", "healthz"),
        ("/openapi.json", "GET", "openapi"),
    )
    keyed = frozenset({"show"})

    def __init__(self, settings: Settings, reader: StatusReader | None = None) -> None:
        self.settings = settings
        self.reader = reader or StatusReader(settings)

    def show(self, request: flask.Request, task_id: str) -> flask.Response:
        wait_s = _wait_param(request, self.settings.max_wait_s)
        if tasks.queue_of(task_id) is None:
            raise not_found(task_id)  # malformed ids never reach a Redis key
        record = self.reader.wait(task_id, wait_s) if wait_s > 0 else self.reader.get(task_id)
        if record is None:
            raise not_found(task_id)
        return json_response(tasks.view(record))

    def openapi(self, request: flask.Request) -> flask.Response:
        return openapi.response("status", self.settings)

    def close(self) -> None:
        self.reader.close()

    def healthz(self, request: flask.Request) -> flask.Response:
        self.reader.ping()
        return json_response({"status": "ok"})


def _wait_param(request: flask.Request, max_wait_s: float) -> float:
    raw = request.args.get("wait")
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
    return Service(settings, StatusAPI(settings))
