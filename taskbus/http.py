"""The HTTP layer both functions share: routing, strict JSON bodies, JSON errors.

Every response is JSON. Errors map to statuses in `_status_of` only; no input of any
shape reaches the framework's 500 handler.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import flask
import gunicorn.util
import werkzeug.exceptions
from werkzeug.routing import Map, Rule

from taskbus import codec
from taskbus.errors import (
    DataLost,
    NotFound,
    PayloadTooLarge,
    RequestError,
    RequestTimeout,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
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

    def __init__(
        self, settings: Settings, rules: list[Rule], endpoints: dict[str, Endpoint], keyed: frozenset[str] = frozenset()
    ) -> None:
        self.settings = settings
        self.store = Store(settings)
        self.routes = Map(rules, strict_slashes=False, merge_slashes=False)
        self._adapter = self.routes.bind("")  # routing needs only path and method: bind once
        self.endpoints = endpoints
        self.keyed = keyed  # endpoints that require an API key when API_KEYS is set
        self._keys = [k.encode() for k in settings.api_keys]
        if not self._keys and keyed:
            log.warning(
                "API_KEYS is not set: %s are open to anyone who can reach this function", ", ".join(sorted(keyed))
            )

    def __call__(self, request: flask.Request) -> flask.Response:
        try:
            return self._dispatch(request)
        finally:
            if getattr(request, "_cached_data", None) is None:
                _skip_unread_body(request, self.settings)

    def _dispatch(self, request: flask.Request) -> flask.Response:
        try:
            endpoint, args = self._adapter.match(request.path, request.method)
            if endpoint in self.keyed and self._keys:
                self._authenticate(request)
            return self.endpoints[endpoint](request, **args)
        except RequestError as exc:
            return error_response(exc.status, exc.code, exc.message, exc.headers)
        except DataLost as exc:
            log.error("reporting data loss on /healthz", extra={"fields": {"error": str(exc)}})
            return error_response(503, "data_lost", str(exc), {"Retry-After": str(self.settings.retry_after_s)})
        except Unavailable as exc:
            log.warning("store or channel unavailable: answering 503", extra={"fields": {"error": str(exc)}})
            return error_response(
                503,
                "unavailable",
                "the task store or channel is unavailable; retry later",
                {"Retry-After": str(self.settings.retry_after_s)},
            )
        except werkzeug.exceptions.MethodNotAllowed as exc:
            allow = sorted(exc.valid_methods or [])
            return error_response(
                405, "method_not_allowed", f"{request.method} is not allowed here", {"Allow": ", ".join(allow)}
            )
        except werkzeug.exceptions.NotFound:
            return error_response(404, "not_found", "no such route")
        except werkzeug.exceptions.HTTPException as exc:
            code = exc.code or 400
            return error_response(code, (exc.name or "error").lower().replace(" ", "_"), exc.description or "")
        except Exception:
            log.exception("unexpected error")
            return error_response(500, "internal", "internal error")

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

    def healthz(self, request: flask.Request) -> flask.Response:
        self.store.ping()
        return json_response({"status": "ok"})


def read_body(request: flask.Request, settings: Settings, media_types: tuple[str, ...] | None = None) -> bytes:
    """The raw body. An oversized one is refused from its Content-Length before it is read;
    `media_types`, if given, are the Content-Types accepted (others get 415)."""
    limit = settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body is over the {limit} byte limit")
    if media_types is not None and request.mimetype not in media_types:
        raise UnsupportedMediaType(f"Content-Type must be {' or '.join(media_types)}")
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("only the utf-8 charset is accepted")
    # Read at most limit + 1 bytes: a chunked body has no Content-Length to refuse up front.
    # A deadline on the socket frees the thread from a client that sends its body slowly.
    sock = request.environ.get("gunicorn.socket")
    deadline = time.monotonic() + settings.body_timeout_s
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            if sock is not None:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = request.stream.read(min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (TimeoutError, werkzeug.exceptions.ClientDisconnected):  # werkzeug wraps socket errors
        request._cached_data = b""  # nothing more to read or drain from this connection
        if time.monotonic() >= deadline:
            raise RequestTimeout(f"the body did not arrive within {settings.body_timeout_s:g} s") from None
        raise
    finally:
        if sock is not None:
            sock.settimeout(None)
    if size > limit:
        raise PayloadTooLarge(f"body is over the {limit} byte limit")
    data = b"".join(chunks)
    request._cached_data = data  # what get_data() returns from now on (see Service.__call__)
    return data


def read_json(request: flask.Request, settings: Settings) -> Any:
    """The request body as strict JSON."""
    return codec.loads_strict(read_body(request, settings, ("application/json",)))


def _skip_unread_body(request: flask.Request, settings: Settings) -> None:
    """Deal with a body we answered without reading (413 from Content-Length, 401, 404, 415).

    functions-framework's after_request hook would read it all with get_data(): a 50 MB
    body, or one that never arrives, would hold the thread. A small body is drained so the
    keep-alive connection stays usable; a large one is left for gunicorn, which closes the
    connection after the response."""
    length = request.content_length or 0
    if 0 < length <= 2 * settings.max_body_bytes:
        while request.stream.read(65536):
            pass
    request._cached_data = b""


def install(app: flask.Flask, threads: int) -> None:
    """Make any launcher serve the function the same way. Call from a function module while
    functions-framework loads it (inside the app context): under gunicorn with `create_app`,
    or under the plain `functions-framework` CLI, which starts gunicorn in-process afterwards.

    - the framework's own 404s (its `/robots.txt` and `/favicon.ico`) answer in JSON;
    - so do the requests gunicorn refuses itself (request line over its limit, headers too
      large, a malformed request line or header): gunicorn writes these with
      `util.write_error`, looked up at call time, so replacing it in this process (one
      function per process) is enough;
    - the CLI's gunicorn takes its thread count from `THREADS` (default 4 per CPU), read
      after this module loads: unless set, it gets the function's own (ENQUEUE_THREADS /
      STATUS_THREADS), since each long-poll or slow client holds a thread.
    """
    os.environ.setdefault("THREADS", str(threads))

    def framework_error(exc: werkzeug.exceptions.HTTPException) -> flask.Response:
        code = exc.code or 500
        return error_response(code, "not_found" if code == 404 else "error", exc.description or "")

    app.register_error_handler(werkzeug.exceptions.HTTPException, framework_error)
    gunicorn.util.write_error = write_gunicorn_error


GUNICORN_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def write_gunicorn_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Drop-in for `gunicorn.util.write_error`. The message may quote the client's input: it
    is JSON-escaped (ASCII only) and cut short."""
    error = {"code": GUNICORN_CODES.get(status_int, "error"), "message": (mesg or reason)[:300]}
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + body)


def status_url(settings: Settings, task_id: str) -> str:
    return f"{settings.status_base_url.rstrip('/')}/tasks/{task_id}"


def not_found(task_id: str) -> NotFound:
    return NotFound(f"no task with id {task_id[:200]!r}")
