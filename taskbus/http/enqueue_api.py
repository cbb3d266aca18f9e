"""Endpoints of the enqueue function: validate, record and publish, answer 202 at once; and
`POST /tasks/<id>:cancel`, so an application can cancel its own tasks (the console's cancel)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from taskbus import openapi, webhooks
from taskbus.admin import Admin
from taskbus.enqueue import Enqueuer, Item, Result
from taskbus.errors import NotFound, RequestError, Unauthorized, ValidationError
from taskbus.http import Service, cancel_response, json_response, status_url
from taskbus.http.body import json_body
from taskbus.http.core import JSON_TYPE, Request, Response
from taskbus.settings import Settings
from taskbus.state.reader import StatusReader
from taskbus.task import DEFAULTABLE, TaskSpec, check_idempotency_key, iso, parse_spec
from taskbus.telemetry import tracing
from taskbus.telemetry.metrics import HttpMetrics

log = logging.getLogger(__name__)

Shape = Callable[[str, str], dict[str, Any]]  # (id, status) -> the 202 body
MAX_BATCH = 1000


class EnqueueAPI:
    routes: tuple[tuple[str, str, str, tuple[str, ...] | None], ...] = (
        ("/tasks", "POST", "create", (JSON_TYPE,)),
        ("/tasks/batch", "POST", "create_batch", (JSON_TYPE,)),
        ("/enqueue", "POST", "enqueue_legacy", (JSON_TYPE,)),
        ("/hooks/<source>", "POST", "hook", ()),  # any media type: the signature covers the raw body
        ("/tasks/<task_id>:cancel", "POST", "cancel", None),
        ("/healthz", "GET", "healthz", None),
        ("/openapi.json", "GET", "openapi", None),
    )
    keyed = frozenset({"create", "create_batch", "enqueue_legacy", "cancel"})

    def __init__(self, settings: Settings, enqueuer: Enqueuer | None = None,
                 metrics: HttpMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics  # counts created tasks and webhook deliveries
        self.enqueuer = enqueuer or Enqueuer(settings)
        self.reader = StatusReader(settings)  # for /healthz: the queues' data-loss flags
        self.admin = Admin(settings)  # for cancel
        self.sources = {source.name: source for source in settings.webhooks}
        self.tracer = tracing.tracer()  # None while tracing is off: each request then skips it all
        if self.sources:
            schemes = {s.name: s.scheme for s in self.sources.values()}
            log.info("webhook sources enabled", extra={"fields": {"sources": schemes}})

    def _spec(self, obj: object, extra: frozenset[str] = frozenset()) -> TaskSpec:
        return parse_spec(
            obj,
            default_max_attempts=self.settings.default_max_attempts,
            default_timeout_s=self.settings.default_timeout_s,
            extra=extra,
        )

    def create(self, request: Request) -> Response:
        spec = self._spec(json_body(request))
        return self._submit(request, spec, _created)

    async def create_async(self, request: Request) -> Response:
        """The ASGI path's `create`: the same rules, the enqueue awaited on the loop."""
        spec = self._spec(json_body(request))
        return await self._submit_async(request, spec, _created)

    def create_batch(self, request: Request) -> Response:
        """`{"tasks": [...]}`, up to MAX_BATCH: each item enqueued atomically or refused alone
        (like SQS SendMessageBatch); results in request order, all in one pipelined round trip."""
        body = json_body(request)
        if not isinstance(body, dict) or set(body) != {"tasks"}:
            raise ValidationError("body", 'must be {"tasks": [...]}')
        items = body["tasks"]
        if not isinstance(items, list) or not 1 <= len(items) <= MAX_BATCH:
            raise ValidationError("tasks", f"must be a list of 1 to {MAX_BATCH} tasks")
        results: list[dict[str, Any]] = []
        accepted: list[tuple[int, TaskSpec, str | None]] = []
        for index, item in enumerate(items):
            try:
                spec = self._spec(item, extra=frozenset({"idempotency_key"}))
                key = item.get("idempotency_key")
                if key is not None:
                    check_idempotency_key("idempotency_key", key)
                accepted.append((index, spec, key))
                results.append({})
            except RequestError as exc:
                results.append({"error": {"code": exc.code, "message": f"tasks[{index}].{exc.message}"}})
        if accepted:
            done = self._enqueue_many(request, [(spec, key) for _, spec, key in accepted])
            for (index, spec, _), (task_id, status, created) in zip(accepted, done):
                if created and self.metrics is not None:
                    self.metrics.enqueued(spec.queue)
                results[index] = {"id": task_id, "status": status, "status_url": status_url(self.settings, task_id)}
        return json_response({"results": results}, 200)

    def enqueue_legacy(self, request: Request) -> Response:
        """The blog design's route: any JSON object becomes the payload of a `default` task."""
        return self._submit(request, self._legacy_spec(request), _published)

    async def enqueue_legacy_async(self, request: Request) -> Response:
        return await self._submit_async(request, self._legacy_spec(request), _published)

    def _legacy_spec(self, request: Request) -> TaskSpec:
        body = json_body(request)
        if not isinstance(body, dict):
            raise ValidationError("body", "must be a JSON object")
        return TaskSpec(
            type="default",
            payload=body,
            max_attempts=self.settings.default_max_attempts,
            timeout_s=self.settings.default_timeout_s,
            defaults=DEFAULTABLE,
        )

    def _submit(self, request: Request, spec: TaskSpec, shape: Shape) -> Response:
        return self._accepted(request, spec, _idempotency_key(request), None, shape)

    async def _submit_async(self, request: Request, spec: TaskSpec, shape: Shape) -> Response:
        key = _idempotency_key(request)
        if self.tracer is None:
            return self._answer(spec, await self.enqueuer.enqueue_async(spec, key), shape)
        with tracing.sending(self.tracer, request.headers, [spec.queue], 1) as span:
            result = await self.enqueuer.enqueue_async(spec, key, traceparent=tracing.traceparent(span))
            span.set_attribute("messaging.message.id", result[0])
        return self._answer(spec, result, shape)

    def _enqueue_many(self, request: Request, items: list[Item]) -> list[Result]:
        """The batch route's enqueue: one `send` span for the whole batch while tracing is on."""
        if self.tracer is None:
            return self.enqueuer.enqueue_many(items)
        with tracing.sending(self.tracer, request.headers, [spec.queue for spec, _ in items], len(items)) as span:
            return self.enqueuer.enqueue_many(items, traceparent=tracing.traceparent(span))

    def hook(self, request: Request, source: str) -> Response:
        """A signed webhook: verify the raw body, answer what must be answered now, else enqueue."""
        src = self.sources[source]  # `admit` refused unknown ones before the body was read
        body = request.body
        received = time.time()
        headers = request.headers  # either framework's: case-insensitive
        tolerance_s = self.settings.webhook_tolerance_s
        try:
            if self.tracer is None:
                verified = webhooks.verify(src, headers, body, request.mimetype, received, tolerance_s)
            else:
                with tracing.span(self.tracer, f"verify {src.name}", headers, {"taskbus.webhook.source": src.name}):
                    verified = webhooks.verify(src, headers, body, request.mimetype, received, tolerance_s)
        except Unauthorized as exc:  # invalid_signature or invalid_timestamp
            if self.metrics is not None:
                self.metrics.webhook(src.name, exc.code)
            raise
        if verified.reply is not None:  # a ping or challenge: answered, not a delivery
            return json_response(verified.reply)
        meta = {
            "source": src.name,
            "event": verified.event,
            "delivery_id": verified.delivery_id,
            "received_at": iso(str(int(received * 1000))),
            "headers": verified.headers,
        }
        spec = TaskSpec(
            type=webhooks.task_type(src.name, verified.event),
            payload={"body": verified.body, "webhook": meta},
            queue=src.queue,
            max_attempts=self.settings.default_max_attempts,
            timeout_s=self.settings.default_timeout_s,
            defaults=DEFAULTABLE,
        )
        dedupe = f"webhook:{src.name}:{verified.delivery_id}" if verified.delivery_id else None
        response = self._accepted(
            request, spec, dedupe, self.settings.webhook_dedupe_ttl_s,
            _created,
        )
        if self.metrics is not None:
            self.metrics.webhook(src.name, "accepted" if response.status == 202 else "duplicate")
        return response

    def _accepted(self, request: Request, spec: TaskSpec, key: str | None, ttl_s: int | None,
                  shape: Shape) -> Response:
        if self.tracer is None:
            return self._answer(spec, self.enqueuer.enqueue(spec, key, ttl_s), shape)
        with tracing.sending(self.tracer, request.headers, [spec.queue], 1) as span:
            result = self.enqueuer.enqueue(spec, key, ttl_s, tracing.traceparent(span))
            span.set_attribute("messaging.message.id", result[0])
        return self._answer(spec, result, shape)

    def _answer(self, spec: TaskSpec, result: Result, shape: Shape) -> Response:
        """202 with the new task's id and status URL (200 for an idempotent replay)."""
        task_id, status, created = result
        if created and self.metrics is not None:
            self.metrics.enqueued(spec.queue)
        url = status_url(self.settings, task_id)
        body = shape(task_id, status)
        body["status_url"] = url
        return json_response(body, 202 if created else 200, {"Location": url})

    def cancel(self, request: Request, task_id: str) -> Response:
        """The audit trail names the caller "api" (API_KEYS carry no labels)."""
        return cancel_response(self.admin, task_id, actor="api")

    def admit(self, endpoint: str, args: dict[str, str]) -> None:
        """An unknown webhook source is a 404 before its body is read."""
        if endpoint == "hook" and args["source"] not in self.sources:
            raise NotFound(f"no webhook source named {args['source'][:64]!r} is configured")

    def openapi(self, request: Request) -> Response:
        return Response(200, openapi.encoded("enqueue", self.settings))

    def close(self) -> None:
        self.enqueuer.close()
        self.reader.close()
        self.admin.close()

    def healthz(self, request: Request) -> Response:
        """Redis, and with CHANNEL=kafka the broker, answer; no queue lost its data."""
        self.enqueuer.ping()
        self.reader.ping()
        return json_response({"status": "ok"})


def _created(task_id: str, status: str) -> dict[str, Any]:
    return {"id": task_id, "status": status}


def _published(task_id: str, status: str) -> dict[str, Any]:
    """The blog design's answer, with ours beside it."""
    return {"message": "Task published", "task_id": task_id, "id": task_id, "status": status}


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is not None:
        check_idempotency_key("Idempotency-Key", key)
    return key


def make_service(settings: Settings) -> Service:
    metrics = HttpMetrics("enqueue", settings.prometheus_multiproc_dir)
    return Service(settings, EnqueueAPI(settings, metrics=metrics), threads=settings.enqueue_threads, metrics=metrics)
