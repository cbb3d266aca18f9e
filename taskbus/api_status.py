"""Endpoints of the status function: read a task, or long-poll until it finishes. Never writes."""

from __future__ import annotations

import math

import flask
from werkzeug.routing import Rule

from taskbus import openapi
from taskbus import task as tasks
from taskbus.errors import ValidationError
from taskbus.http import Service, json_response, not_found
from taskbus.settings import Settings


def make_service(settings: Settings) -> Service:
    def show(request: flask.Request, task_id: str) -> flask.Response:
        wait_s = _wait_param(request, settings.max_wait_s)
        if tasks.queue_of(task_id) is None:
            raise not_found(task_id)  # malformed ids never reach a Redis key
        record = service.store.wait(task_id, wait_s) if wait_s > 0 else service.store.get(task_id)
        if record is None:
            raise not_found(task_id)
        return json_response(tasks.view(record))

    def openapi_document(request: flask.Request) -> flask.Response:
        return openapi.response("status", settings)

    rules = [
        Rule("/tasks/<task_id>", methods=["GET"], endpoint="show"),
        Rule("/task/<task_id>", methods=["GET"], endpoint="show"),
        Rule("/healthz", methods=["GET"], endpoint="healthz"),
        Rule("/openapi.json", methods=["GET"], endpoint="openapi"),
    ]
    service = Service(settings, rules, {}, keyed=frozenset({"show"}))
    service.endpoints.update(show=show, healthz=service.healthz, openapi=openapi_document)
    return service


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
