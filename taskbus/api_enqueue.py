"""Endpoints of the enqueue function: validate, record and publish, answer 202 at once."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import flask
from werkzeug.routing import Rule

from taskbus import openapi, webhooks
from taskbus.errors import NotFound, RequestError, ValidationError
from taskbus.http import Service, json_response, read_body, read_json, status_url
from taskbus.settings import Settings
from taskbus.task import TaskSpec, check_idempotency_key, iso, parse_spec

log = logging.getLogger(__name__)

Shape = Callable[[str, str], dict[str, Any]]
MAX_BATCH = 1000


def make_service(settings: Settings) -> Service:
    sources = {source.name: source for source in settings.webhooks}

    def create(request: flask.Request) -> flask.Response:
        spec = parse_spec(
            read_json(request, settings),
            default_max_attempts=settings.default_max_attempts,
            default_timeout_s=settings.default_timeout_s,
        )
        return submit(request, spec, lambda task_id, status: {"id": task_id, "status": status})

    def create_batch(request: flask.Request) -> flask.Response:
        """`{"tasks": [...]}`, up to MAX_BATCH: each item enqueued atomically or refused alone
        (like SQS SendMessageBatch); results in request order, all in one pipelined round trip."""
        body = read_json(request, settings)
        if not isinstance(body, dict) or set(body) != {"tasks"}:
            raise ValidationError("body", 'must be {"tasks": [...]}')
        items = body["tasks"]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            raise ValidationError("tasks", f"must be a list of 1 to {MAX_BATCH} tasks")
        results: list[dict[str, Any]] = []
        accepted: list[tuple[int, TaskSpec, str | None]] = []
        for index, item in enumerate(items):
            try:
                spec = parse_spec(
                    item,
                    default_max_attempts=settings.default_max_attempts,
                    default_timeout_s=settings.default_timeout_s,
                    extra=frozenset({"idempotency_key"}),
                )
                key = item.get("idempotency_key")
                if key is not None:
                    check_idempotency_key("idempotency_key", key)
                accepted.append((index, spec, key))
                results.append({})
            except RequestError as exc:
                results.append({"error": {"code": exc.code, "message": f"tasks[{index}].{exc.message}"}})
        if accepted:
            done = service.store.enqueue_many([(spec, key) for _, spec, key in accepted])
            for (index, _, _), (task_id, status, _) in zip(accepted, done):
                results[index] = {"id": task_id, "status": status, "status_url": status_url(settings, task_id)}
        return json_response({"results": results}, 200)

    def enqueue_legacy(request: flask.Request) -> flask.Response:
        """The blog design's route: any JSON object becomes the payload of a `default` task."""
        body = read_json(request, settings)
        if not isinstance(body, dict):
            raise ValidationError("body", "must be a JSON object")
        spec = TaskSpec(
            type="default",
            payload=body,
            max_attempts=settings.default_max_attempts,
            timeout_s=settings.default_timeout_s,
        )
        return submit(
            request,
            spec,
            lambda task_id, status: {"message": "Task published", "task_id": task_id, "id": task_id, "status": status},
        )

    def submit(request: flask.Request, spec: TaskSpec, shape: Shape) -> flask.Response:
        key = request.headers.get("Idempotency-Key")
        if key is not None:
            check_idempotency_key("Idempotency-Key", key)
        return _accepted(spec, key, None, shape)

    def hook(request: flask.Request, source: str) -> flask.Response:
        """A signed webhook: verify the raw body, answer what must be answered now, else enqueue."""
        src = sources.get(source)
        if src is None:
            raise NotFound(f"no webhook source named {source[:64]!r} is configured")
        body = read_body(request, settings)
        received = time.time()
        hit = webhooks.verify(src, request.headers, body, request.mimetype, received, settings.webhook_tolerance_s)
        if hit.reply is not None:
            return json_response(hit.reply)
        meta = {
            "source": src.name,
            "event": hit.event,
            "delivery_id": hit.delivery_id,
            "received_at": iso(str(int(received * 1000))),
            "headers": hit.headers,
        }
        spec = TaskSpec(
            type=webhooks.task_type(src.name, hit.event),
            payload={"body": hit.body, "webhook": meta},
            queue=src.queue,
            max_attempts=settings.default_max_attempts,
            timeout_s=settings.default_timeout_s,
        )
        dedupe = f"webhook:{src.name}:{hit.delivery_id}" if hit.delivery_id else None
        return _accepted(
            spec, dedupe, settings.webhook_dedupe_ttl_s, lambda task_id, status: {"id": task_id, "status": status}
        )

    def _accepted(spec: TaskSpec, key: str | None, ttl_s: int | None, shape: Shape) -> flask.Response:
        task_id, status, created = service.store.enqueue(spec, key, ttl_s)
        url = status_url(settings, task_id)
        body = shape(task_id, status)
        body["status_url"] = url
        return json_response(body, 202 if created else 200, {"Location": url})

    def openapi_document(request: flask.Request) -> flask.Response:
        return openapi.response("enqueue", settings)

    def healthz(request: flask.Request) -> flask.Response:
        service.store.ping(channel=True)  # with CHANNEL=kafka, the broker must answer too
        return json_response({"status": "ok"})

    rules = [
        Rule("/tasks", methods=["POST"], endpoint="create"),
        Rule("/tasks/batch", methods=["POST"], endpoint="create_batch"),
        Rule("/enqueue", methods=["POST"], endpoint="enqueue_legacy"),
        Rule("/hooks/<source>", methods=["POST"], endpoint="hook"),
        Rule("/healthz", methods=["GET"], endpoint="healthz"),
        Rule("/openapi.json", methods=["GET"], endpoint="openapi"),
    ]
    service = Service(settings, rules, {}, keyed=frozenset({"create", "create_batch", "enqueue_legacy"}))
    service.endpoints.update(
        create=create,
        create_batch=create_batch,
        enqueue_legacy=enqueue_legacy,
        hook=hook,
        healthz=healthz,
        openapi=openapi_document,
    )
    if sources:
        log.info("webhook sources enabled", extra={"fields": {"sources": {s.name: s.scheme for s in sources.values()}}})
    return service
