"""Endpoints of the enqueue function: validate, record and publish, answer 202 at once."""

from __future__ import annotations

import flask
from werkzeug.routing import Rule

from taskbus.errors import ValidationError
from taskbus.http import Service, json_response, read_json, status_url
from taskbus.settings import Settings
from taskbus.task import TaskSpec, check_idempotency_key, parse_spec


def make_service(settings: Settings) -> Service:
    def create(request: flask.Request) -> flask.Response:
        body = read_json(request, settings)
        spec = parse_spec(body, default_max_attempts=settings.default_max_attempts,
                          default_timeout_s=settings.default_timeout_s)
        return _submit(request, spec, lambda task_id, status: {"id": task_id, "status": status})

    def enqueue_legacy(request: flask.Request) -> flask.Response:
        """The blog design's route: any JSON object becomes the payload of a `default` task."""
        body = read_json(request, settings)
        if not isinstance(body, dict):
            raise ValidationError("body", "must be a JSON object")
        spec = TaskSpec(type="default", payload=body, max_attempts=settings.default_max_attempts,
                        timeout_s=settings.default_timeout_s)
        return _submit(request, spec, lambda task_id, status: {
            "message": "Task published", "task_id": task_id, "id": task_id, "status": status})

    def _submit(request: flask.Request, spec: TaskSpec, shape: object) -> flask.Response:
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            check_idempotency_key("Idempotency-Key", key)
        task_id, status, created = service.store.enqueue(spec, key)
        url = status_url(settings, task_id)
        body = shape(task_id, status)  # type: ignore[operator]
        body["status_url"] = url
        return json_response(body, 202 if created else 200, {"Location": url})

    rules = [
        Rule("/tasks", methods=["POST"], endpoint="create"),
        Rule("/enqueue", methods=["POST"], endpoint="enqueue_legacy"),
        Rule("/healthz", methods=["GET"], endpoint="healthz"),
    ]
    service = Service(settings, rules, {})
    service.endpoints.update(create=create, enqueue_legacy=enqueue_legacy, healthz=service.healthz)
    return service
