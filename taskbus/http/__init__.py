"""The HTTP layer the functions share: routing, bearer keys, body limits and JSON errors,
written once against the neutral `core.Request` / `core.Response`.

Every response is JSON (but `GET /metrics`, Prometheus text, served by `Service.scrape`). Error
classes map to statuses in `STATUS` only; no input of any shape reaches the framework's 500 handler.

    core           the neutral request and response
    enqueue_api    EnqueueAPI: POST /tasks, /tasks/batch, /enqueue, /hooks/<source>, /tasks/<id>:cancel
    status_api     StatusAPI: GET /tasks/<id>[?wait=s], /task/<id>
    console_api    ConsoleAPI: the admin API under /api/... and the dashboard's static files
    body           the body rules: size, type, charset, time
    static         the console's dashboard files: types, a strict CSP, nothing outside its folder
    flask_adapter  the WSGI path: flask.Request in, flask.Response out
    asgi           the ASGI path: Starlette request in, Starlette response out
    gunicorn       JSON for gunicorn's own refusals; the CLI's thread count
    gunicorn_conf  the server hooks `taskbus serve` gives gunicorn (child_exit: metrics files)
    uvicorn        JSON for uvicorn's own refusals; the worker class `taskbus serve` runs
"""

from __future__ import annotations

import dataclasses
import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import anyio.to_thread
import werkzeug.exceptions
from werkzeug.routing import BaseConverter, Map, Rule

from taskbus import task as tasks
from taskbus.errors import (
    BadRequest,
    Conflict,
    DataLost,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    RequestError,
    RequestTimeout,
    TaskbusError,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    ValidationError,
)
from taskbus.http.body import admit_body
from taskbus.http.core import Request, Response, error_response, json_response
from taskbus.settings import Settings
from taskbus.telemetry.metrics import CONTENT_TYPE, UNMATCHED, HttpMetrics, loopback

if TYPE_CHECKING:
    from taskbus.admin import Admin

__all__ = ["STATUS", "Service", "cancel_response", "json_response", "error_response", "not_found", "status_of",
           "status_url"]

log = logging.getLogger(__name__)

# The one map from error classes to HTTP statuses (most specific class first).
STATUS: dict[type[TaskbusError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    RequestTimeout: 408,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    ValidationError: 422,
    RequestError: 400,
    DataLost: 503,
    Unavailable: 503,
}

METRICS_PATH = "/metrics"  # every function's, when its service has metrics
METRICS_ENDPOINT = "_metrics"  # served by the Service itself, not by the API

# What a route reads: None (no body), () (any media type), or the media types accepted.
BodyRule = tuple[str, ...] | None
Reader = Callable[[Request], bytes]
AsyncReader = Callable[[Request], Awaitable[bytes]]


def status_of(exc: TaskbusError) -> int:
    """The HTTP status of an error, by its nearest class in `STATUS`."""
    return next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)


class API(Protocol):
    """One function's endpoints: `routes` are (path, method, endpoint method name, body rule);
    the endpoints in `keyed` need one of the service's keys when it has any (API_KEYS unless
    the function says otherwise). An endpoint `x` may have an `x_async` twin, which the ASGI
    path awaits instead of running `x` on a thread. An API may also name werkzeug `converters`
    its routes use (a class attribute, a dict)."""

    routes: tuple[tuple[str, str, str, BodyRule], ...]
    keyed: frozenset[str]

    def admit(self, endpoint: str, args: dict[str, str]) -> None:
        """Refuse, before any body is read, what the path alone decides (an unknown webhook source)."""

    def close(self) -> None:
        """Let go of connections."""


class Plan(NamedTuple):
    """A routed, authenticated request: which endpoint, its path arguments, its body rule."""

    endpoint: str
    args: dict[str, str]
    body: BodyRule
    actor: str = ""  # the label of the key that authenticated it; empty when open
    route: str = UNMATCHED  # the matched rule (`/tasks/<task_id>`), the metrics' route label


class Service:
    """Routes requests of one function to its API's methods and turns every error into JSON."""

    def __init__(self, settings: Settings, api: API, threads: int = 40,
                 keys: Sequence[tuple[str, str]] | None = None, keys_name: str = "API_KEYS",
                 metrics: HttpMetrics | None = None) -> None:
        """`keys` are the (label, key) pairs that guard the keyed endpoints (default: API_KEYS,
        each labelled "api"); the matched key's label becomes `request.actor`. With `metrics`,
        every request is counted and `GET /metrics` serves them (see `scrape`)."""
        self.settings = settings
        self.api = api
        self.threads = threads  # ASGI path: sync endpoints at once per process (the WSGI path's thread count)
        self.metrics = metrics
        own = [(METRICS_PATH, "GET", METRICS_ENDPOINT, None)] if metrics is not None else []
        routes = [*api.routes, *own]
        rules = [Rule(path, methods=[method], endpoint=endpoint) for path, method, endpoint, _ in routes]
        converters: dict[str, type[BaseConverter]] = getattr(api, "converters", {})
        self.routes = Map(rules, strict_slashes=False, merge_slashes=False, converters=converters)
        # the endpoints that need a key when the service has keys (/metrics: from a non-loopback client)
        self.keyed = api.keyed | {METRICS_ENDPOINT} if metrics is not None else api.keyed
        self._bodies = {endpoint: body for _, _, endpoint, body in routes}
        self._adapter = self.routes.bind("")  # routing needs only path and method: bind once
        pairs = [("api", k) for k in settings.api_keys] if keys is None else list(keys)
        self._keys = [(label, key.encode()) for label, key in pairs]
        self._retry_after = {"Retry-After": str(settings.retry_after_s)}
        if not self._keys and api.keyed:
            log.warning(
                "%s is not set: %s are open to anyone who can reach this function", keys_name,
                ", ".join(sorted(api.keyed)),
            )

    def plan(self, request: Request) -> Plan:
        """Route, authenticate, and check what can be checked before the body is read."""
        rule, matched = self._adapter.match(request.path, request.method, return_rule=True)
        endpoint = rule.endpoint
        args = {name: str(value) for name, value in matched.items()}
        actor = ""
        if endpoint in self.api.keyed and self._keys:
            actor = self._authenticate(request)
        self.api.admit(endpoint, args)
        body = self._bodies[endpoint]
        if body is not None:
            admit_body(request, self.settings, body)
        return Plan(endpoint, args, body, actor, rule.rule)

    def handle(self, request: Request, read: Reader) -> Response:
        """The WSGI path: everything on the calling thread."""
        started = time.perf_counter()
        plan = None
        try:
            plan = self.plan(request)
            request = dataclasses.replace(request, actor=plan.actor)
            if plan.body is not None:
                request = dataclasses.replace(request, body=read(request))
            if plan.endpoint == METRICS_ENDPOINT:
                response = self.scrape(request)
            else:
                response = getattr(self.api, plan.endpoint)(request, **plan.args)
        except Exception as exc:
            response = self.error(request, exc)
        if self.metrics is not None:
            self._observe(request, plan, response, started)
        return response

    async def handle_async(self, request: Request, read: AsyncReader) -> Response:
        """The ASGI path: the body is awaited; an endpoint without an `_async` twin (it calls
        the sync Redis client or the Kafka producer) runs on a worker thread of the loop's pool,
        sized `threads` (a twin may use that pool too)."""
        started = time.perf_counter()
        plan = None
        try:
            plan = self.plan(request)
            request = dataclasses.replace(request, actor=plan.actor)
            if plan.body is not None:
                request = dataclasses.replace(request, body=await read(request))
            limiter = anyio.to_thread.current_default_thread_limiter()  # one per event loop
            if limiter.total_tokens != self.threads:
                limiter.total_tokens = self.threads
            twin = getattr(self.api, f"{plan.endpoint}_async", None)
            if twin is not None:
                response: Response = await twin(request, **plan.args)
            else:
                endpoint = self.scrape if plan.endpoint == METRICS_ENDPOINT else getattr(self.api, plan.endpoint)
                response = await anyio.to_thread.run_sync(functools.partial(endpoint, request, **plan.args))
        except Exception as exc:
            response = self.error(request, exc)
        if self.metrics is not None:
            self._observe(request, plan, response, started)
        return response

    def scrape(self, request: Request) -> Response:
        """`GET /metrics`: open to loopback clients (a sidecar, a local Prometheus); anyone else
        needs one of this service's keys when it has any (API_KEYS, the console's ADMIN_KEYS).
        Counters only: never a payload, a key or a task id."""
        if self._keys and not loopback(request.remote):
            self._authenticate(request)
        assert self.metrics is not None  # the route exists only with metrics
        return Response(200, self.metrics.render(), media_type=CONTENT_TYPE)

    def _observe(self, request: Request, plan: Plan | None, response: Response, started: float) -> None:
        """Count the request under its rule (never the raw path: task ids would be labels)."""
        route = plan.route if plan is not None else self._route_of(request)
        assert self.metrics is not None
        self.metrics.request(route, response.status, time.perf_counter() - started)

    def _route_of(self, request: Request) -> str:
        """The rule of a request refused before its plan was made (401, 413, ...), or UNMATCHED."""
        try:
            rule, _ = self._adapter.match(request.path, request.method, return_rule=True)
        except werkzeug.exceptions.HTTPException:
            return UNMATCHED
        return str(rule.rule)

    def error(self, request: Request, exc: Exception) -> Response:
        """Every error as JSON: ours by `STATUS`, routing errors as 404/405, anything else 500."""
        if isinstance(exc, RequestError):
            return error_response(status_of(exc), exc.code, exc.message, exc.headers, exc.details)
        if isinstance(exc, DataLost):
            log.error("reporting data loss on /healthz", extra={"fields": {"error": str(exc)}})
            return error_response(status_of(exc), "data_lost", str(exc), self._retry_after)
        if isinstance(exc, Unavailable):
            log.warning("store or channel unavailable: answering 503", extra={"fields": {"error": str(exc)}})
            message = "the task store or channel is unavailable; retry later"
            return error_response(status_of(exc), "unavailable", message, self._retry_after)
        if isinstance(exc, werkzeug.exceptions.HTTPException):
            return _routing_error(request, exc)
        log.error("unexpected error", exc_info=exc)
        return error_response(500, "internal", "internal error")

    def close(self) -> None:
        self.api.close()

    def _authenticate(self, request: Request) -> str:
        """Constant-time check of `Authorization: Bearer <key>` against every configured key
        (each one compared, whichever matches); the matched key's label."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        token = given.strip().encode("utf-8", "replace")
        label = ""
        for name, key in self._keys:
            if hmac.compare_digest(token, key) and not label:
                label = name
        if scheme.lower() != "bearer" or not label:
            raise Unauthorized(
                "a valid API key is required: Authorization: Bearer <key>",
                code="unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="taskbus"'},
            )
        return label


def _routing_error(request: Request, exc: werkzeug.exceptions.HTTPException) -> Response:
    if isinstance(exc, werkzeug.exceptions.MethodNotAllowed):
        allow = ", ".join(sorted(exc.valid_methods or []))
        return error_response(405, "method_not_allowed", f"{request.method} is not allowed here", {"Allow": allow})
    if isinstance(exc, werkzeug.exceptions.NotFound):
        return error_response(404, "not_found", "no such route")
    code = exc.code or 400
    return error_response(code, (exc.name or "error").lower().replace(" ", "_"), exc.description or "")


def status_url(settings: Settings, task_id: str) -> str:
    return f"{settings.status_base_url.rstrip('/')}/tasks/{task_id}"


def not_found(task_id: str) -> NotFound:
    return NotFound(f"no task with id {task_id[:200]!r}")


def query_value(request: Request, name: str) -> str | None:
    """A query parameter, or None. Both frameworks give their multi-dicts' `get` (first value)."""
    value: Any = request.query.get(name)
    return None if value is None else str(value)


def cancel_response(admin: Admin, task_id: str, actor: str) -> Response:
    """`POST .../tasks/<id>:cancel` on the enqueue function and the console alike: 200 when the
    task will never start, 202 while a running one is being stopped; 404, or 409 naming the
    final status, raised by the core."""
    if tasks.queue_of(task_id) is None:
        raise not_found(task_id)
    outcome, view = admin.cancel(task_id, actor=actor)
    return json_response({"task": view, "outcome": outcome}, 200 if outcome == "cancelled" else 202)
