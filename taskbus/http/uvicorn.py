"""The ASGI path served the same way under any launcher: JSON for uvicorn's and Starlette's own
refusals, long-polls woken on SIGTERM, and the gunicorn worker class `taskbus serve` runs.

What uvicorn answers itself, before any application code runs, and what becomes of it here:

- a malformed request line or header (httptools or h11 fail to parse it): uvicorn writes a
  plain-text 400 and closes; `install` replaces that writer, so it is our JSON 400;
- over `limit_concurrency` connections: uvicorn's plain-text 503; replaced by our JSON 503
  with `Retry-After`;
- Starlette's own 404 (`/robots.txt`, `/favicon.ico`, which functions-framework routes itself)
  and 405 (a method functions-framework's route does not list, such as TRACE): JSON.

414 and 431: httptools (the fast parser) has no request-line or header-size limit of its own,
so `http.asgi.over_limits` applies gunicorn's (4094-byte target, 8190-byte header line, 100
headers) as the function's first step, in the same JSON. What is not possible: refusing them
before they are received (the whole head is read into memory first; uvicorn's flow control
bounds it only loosely), and the `431` status for a head so large h11 refuses it (h11 workers
only): that stays a 400, though in JSON.
"""

from __future__ import annotations

import json
import signal
import sys
from collections.abc import Callable
from types import FrameType
from typing import Any

import starlette.exceptions
import starlette.middleware.exceptions
import starlette.requests
import starlette.responses
import uvicorn.protocols.http.h11_impl as h11_impl
import uvicorn.protocols.http.httptools_impl as httptools_impl
import uvicorn.server
from uvicorn_worker import UvicornWorker

from taskbus.http.gunicorn import MAX_QUOTED_CHARS

# Called on SIGTERM (or SIGINT) in a worker process, before uvicorn starts its graceful
# shutdown: the status function wakes its long-polls there, so they answer within it.
DRAIN_HOOKS: list[Callable[[], None]] = []
# Connections one worker process serves at once before it answers 503: long-polls are cheap
# on this path (a coroutine each, all on one shared Redis subscription), so this bounds memory.
LIMIT_CONCURRENCY = 4096


def install() -> None:
    """Call from a function module as it loads (one function per process, like
    `http.gunicorn.install`): the replacements are looked up at call time."""
    for protocol in (httptools_impl.HttpToolsProtocol, h11_impl.H11Protocol):
        protocol.send_400_response = _send_400_response  # type: ignore[method-assign]
    setattr(httptools_impl, "service_unavailable", _service_unavailable)  # noqa: B010 (not exported)
    setattr(h11_impl, "service_unavailable", _service_unavailable)  # noqa: B010
    middleware = starlette.middleware.exceptions.ExceptionMiddleware
    middleware.http_exception = _http_exception  # type: ignore[method-assign]
    if not getattr(uvicorn.server.Server.handle_exit, "taskbus", False):
        uvicorn.server.Server.handle_exit = _handle_exit(uvicorn.server.Server.handle_exit)  # type: ignore[method-assign]


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message[:MAX_QUOTED_CHARS]}}).encode()


def _send_400_response(self: Any, msg: str) -> None:
    """Drop-in for uvicorn's protocols' `send_400_response`: the same 400, in the error shape."""
    body = error_body("bad_request", msg)
    head = (
        f"HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    self.transport.write(head.encode("latin-1") + body)
    self.transport.close()


async def _service_unavailable(scope: Any, receive: Any, send: Any) -> None:
    """Drop-in for uvicorn's answer past `limit_concurrency`."""
    body = error_body("unavailable", "this instance is at its connection limit; retry later")
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"retry-after", b"1"), (b"connection", b"close")]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _http_exception(
    self: Any, request: starlette.requests.Request, exc: Exception
) -> starlette.responses.Response:
    """Starlette's own HTTP errors (routing) in the error shape."""
    assert isinstance(exc, starlette.exceptions.HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
    message = f"{request.method} is not allowed here" if exc.status_code == 405 else str(exc.detail)
    return starlette.responses.Response(error_body(code, message), status_code=exc.status_code,
                                        headers=exc.headers, media_type="application/json")


def _handle_exit(original: Callable[..., None]) -> Callable[..., None]:
    def handle_exit(self: Any, sig: int, frame: FrameType | None) -> None:
        if sig in (signal.SIGTERM, signal.SIGINT):
            for hook in DRAIN_HOOKS:
                hook()
        original(self, sig, frame)

    handle_exit.taskbus = True  # type: ignore[attr-defined]
    return handle_exit


class Worker(UvicornWorker):  # type: ignore[misc]
    """gunicorn's worker class for `taskbus serve`: uvicorn with uvloop and httptools, a
    connection cap, and uvicorn's own graceful shutdown bounded below gunicorn's (which then
    SIGKILLs): in-flight requests finish, long-polls answer at once (DRAIN_HOOKS)."""

    CONFIG_KWARGS: dict[str, Any] = {"loop": "auto", "http": "auto", "limit_concurrency": LIMIT_CONCURRENCY}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.timeout_graceful_shutdown = max(1, self.cfg.graceful_timeout - 1)

    def init_signals(self) -> None:
        """uvicorn raises the SIGTERM (or SIGINT) it caught again once its graceful shutdown is
        done: under the default handler the process would die of it and skip its exit hooks
        (tracing's flush of buffered spans), so it exits normally instead."""
        super().init_signals()
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _exit_normally)


def _exit_normally(sig: int, frame: FrameType | None) -> None:
    sys.exit(0)
