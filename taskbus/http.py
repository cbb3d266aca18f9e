"""The HTTP layer both functions share: routing, strict JSON bodies, JSON errors.

Every response is JSON. Errors map to statuses in `_status_of` only; no input of any
shape reaches the framework's 500 handler.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import flask
import werkzeug.exceptions
from werkzeug.routing import Map, Rule

from taskbus import codec
from taskbus.errors import (MethodNotAllowed, NotFound, PayloadTooLarge, RequestError, Unavailable,
                            UnsupportedMediaType)
from taskbus.settings import Settings
from taskbus.store import Store

log = logging.getLogger(__name__)

Endpoint = Callable[..., flask.Response]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> flask.Response:
    return flask.Response(codec.dumps(body), status=status, headers=headers, mimetype="application/json")


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> flask.Response:
    return json_response({"error": {"code": code, "message": message}}, status, headers)


class Service:
    """Routes requests of one function to its endpoints and turns every error into JSON."""

    def __init__(self, settings: Settings, rules: list[Rule], endpoints: dict[str, Endpoint]) -> None:
        self.settings = settings
        self.store = Store(settings)
        self.routes = Map(rules, strict_slashes=False, merge_slashes=False)
        self.endpoints = endpoints

    def __call__(self, request: flask.Request) -> flask.Response:
        try:
            endpoint, args = self.routes.bind_to_environ(request.environ).match()
            return self.endpoints[endpoint](request, **args)
        except RequestError as exc:
            headers = {"Allow": ", ".join(exc.allow)} if isinstance(exc, MethodNotAllowed) else None
            return error_response(exc.status, exc.code, exc.message, headers)
        except Unavailable as exc:
            log.warning("redis unavailable: answering 503", extra={"error": str(exc)})
            return error_response(503, "unavailable", "the task store is unavailable; retry later",
                                  {"Retry-After": str(self.settings.retry_after_s)})
        except werkzeug.exceptions.MethodNotAllowed as exc:
            allow = sorted(exc.valid_methods or [])
            return error_response(405, "method_not_allowed", f"{request.method} is not allowed here",
                                  {"Allow": ", ".join(allow)})
        except werkzeug.exceptions.NotFound:
            return error_response(404, "not_found", "no such route")
        except werkzeug.exceptions.RequestEntityTooLarge:
            return _too_large(self.settings)
        except werkzeug.exceptions.HTTPException as exc:
            code = exc.code or 400
            return error_response(code, (exc.name or "error").lower().replace(" ", "_"), exc.description or "")
        except Exception:
            log.exception("unexpected error")
            return error_response(500, "internal", "internal error")

    def healthz(self, request: flask.Request) -> flask.Response:
        self.store.ping()
        return json_response({"status": "ok"})


def read_json(request: flask.Request, settings: Settings) -> Any:
    """The request body as strict JSON; refuses an oversized body before reading it."""
    limit = settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body is over the {limit} byte limit")
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("Content-Type must be application/json")
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("only the utf-8 charset is accepted")
    request.max_content_length = limit  # also bounds chunked bodies while they stream in
    return codec.loads_strict(request.get_data(cache=False))


def _too_large(settings: Settings) -> flask.Response:
    return error_response(413, PayloadTooLarge.code, f"body is over the {settings.max_body_bytes} byte limit")


def status_url(settings: Settings, task_id: str) -> str:
    return f"{settings.status_base_url.rstrip('/')}/tasks/{task_id}"


def not_found(task_id: str) -> NotFound:
    return NotFound(f"no task with id {task_id[:200]!r}")
