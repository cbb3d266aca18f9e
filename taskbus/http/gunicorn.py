"""Serving a function the same way under any launcher: JSON for the framework's and gunicorn's
own refusals, and the thread count handed to the functions-framework CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
from collections.abc import Callable
from types import FrameType
from typing import Any

import flask
import gunicorn.util
import gunicorn.workers.base
import werkzeug.exceptions

from taskbus.http.core import error_response
from taskbus.http.flask_adapter import to_flask

GUNICORN_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}
MAX_QUOTED_CHARS = 300


def install(app: flask.Flask, threads: int) -> None:
    """Call from a function module while functions-framework loads it (inside the app context):
    under gunicorn with `create_app`, or under the plain `functions-framework` CLI, which starts
    gunicorn in-process afterwards.

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
        return to_flask(error_response(code, "not_found" if code == 404 else "error", exc.description or ""))

    app.register_error_handler(werkzeug.exceptions.HTTPException, framework_error)
    gunicorn.util.write_error = write_gunicorn_error


def write_gunicorn_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Drop-in for `gunicorn.util.write_error`. The message may quote the client's input: it
    is JSON-escaped (ASCII only) and cut short."""
    error = {"code": GUNICORN_CODES.get(status_int, "error"), "message": (mesg or reason)[:MAX_QUOTED_CHARS]}
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    gunicorn.util.write_nonblock(sock, head.encode("latin-1") + body)


def on_term(hook: Callable[[], None]) -> None:
    """Run `hook` first when this gunicorn worker is told to stop (SIGTERM), then gunicorn's own
    handler: the status function wakes its long-polls, so they answer within the graceful
    timeout. Only where the module loads in a gunicorn worker that has installed its signals
    (`taskbus serve --wsgi`); under the functions-framework CLI the module loads in the master,
    before the fork, and nothing is chained (long-polls there run to their wait or the kill)."""
    current: Any = signal.getsignal(signal.SIGTERM)
    if not isinstance(getattr(current, "__self__", None), gunicorn.workers.base.Worker):
        return

    def handle(sig: int, frame: FrameType | None) -> None:
        hook()
        current(sig, frame)

    signal.signal(signal.SIGTERM, handle)
