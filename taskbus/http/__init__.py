"""The HTTP layer both functions share: routing, bearer keys, and JSON errors.

Every response is JSON. Error classes map to statuses in `STATUS` only; no input of any
shape reaches the framework's 500 handler.

    enqueue_api   EnqueueAPI: POST /tasks, /tasks/batch, /enqueue, /hooks/<source>
    status_api    StatusAPI: GET /tasks/<id>[?wait=s], /task/<id>
    body          reading bodies within size, type and time limits
    gunicorn      JSON for gunicorn's own refusals; the CLI's thread count
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any, Protocol

import flask
import werkzeug.exceptions
from werkzeug.routing import Map, Rule

from taskbus import codec
from taskbus.errors import (
    BadRequest,
    DataLost,
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
from taskbus.http.body import skip_unread_body
from taskbus.settings import Settings

log = logging.getLogger(__name__)

Endpoint = Callable[..., flask.Response]

# The one map from error classes to HTTP statuses (most specific class first).
STATUS: dict[type[TaskbusError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    NotFound: 404,
    RequestTimeout: 408,
    PayloadTooLarge: 413,
    UnsupportedMediaType: 415,
    ValidationError: 422,
    RequestError: 400,
    DataLost: 503,
    Unavailable: 503,
}


def status_of(exc: TaskbusError) -> int:
    """The HTTP status of an error, by its nearest class in `STATUS`."""
    return next(STATUS[cls] for cls in type(exc).__mro__ if cls in STATUS)


class API(Protocol):
    """One function's endpoints: `routes` are (path, method, endpoint method name); the
    endpoints in `keyed` need an API key when API_KEYS is set."""

    routes: tuple[tuple[str, str, str], ...]
    keyed: frozenset[str]

    def close(self) -> None:
        """Let go of connections."""


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> flask.Response:
    return flask.Response(codec.dumps(body), status=status, headers=headers, mimetype="application/json")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> flask.Response:
    return json_response({"error": {"code": code, "message": message}}, status, headers)


class Service:
    """Routes requests of one function to its API's methods and turns every error into JSON."""

    def __init__(self, settings: Settings, api: API) -> None:
        self.settings = settings
        self.api = api
        rules = [Rule(path, methods=[method], endpoint=endpoint) for path, method, endpoint in api.routes]
        self.routes = Map(rules, strict_slashes=False, merge_slashes=False)
        self.keyed = api.keyed
        self._adapter = self.routes.bind("")  # routing needs only path and method: bind once
        self._keys = [k.encode() for k in settings.api_keys]
        self._retry_after = {"Retry-After": str(settings.retry_after_s)}
        if not self._keys and api.keyed:
            log.warning(
                "API_KEYS is not set: %s are open to anyone who can reach this function", ", ".join(sorted(api.keyed))
            )

    def __call__(self, request: flask.Request) -> flask.Response:
        try:
            return self._dispatch(request)
        finally:
            skip_unread_body(request, self.settings)

    def _dispatch(self, request: flask.Request) -> flask.Response:
        try:
            endpoint, args = self._adapter.match(request.path, request.method)
            if endpoint in self.api.keyed and self._keys:
                self._authenticate(request)
            response: flask.Response = getattr(self.api, endpoint)(request, **args)
            return response
        except RequestError as exc:
            return error_response(status_of(exc), exc.code, exc.message, exc.headers)
        except DataLost as exc:
            log.error("reporting data loss on /healthz", extra={"fields": {"error": str(exc)}})
            return error_response(status_of(exc), "data_lost", str(exc), self._retry_after)
        except Unavailable as exc:
            log.warning("store or channel unavailable: answering 503", extra={"fields": {"error": str(exc)}})
            message = "the task store or channel is unavailable; retry later"
            return error_response(status_of(exc), "unavailable", message, self._retry_after)
        except werkzeug.exceptions.HTTPException as exc:
            return _routing_error(request, exc)
        except Exception:
            log.exception("unexpected error")
            return error_response(500, "internal", "internal error")

    def close(self) -> None:
        self.api.close()

    def _authenticate(self, request: flask.Request) -> None:
        """Constant-time check of `Authorization: Bearer <key>` against every configured key."""
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        token = given.strip().encode("utf-8", "replace")
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(token, key)
        if scheme.lower() != "bearer" or not matched:
            raise Unauthorized(
                "a valid API key is required: Authorization: Bearer <key>",
                code="unauthorized",
                headers={"WWW-Authenticate": 'Bearer realm="taskbus"'},
            )


def _routing_error(request: flask.Request, exc: werkzeug.exceptions.HTTPException) -> flask.Response:
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
