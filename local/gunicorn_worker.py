"""gunicorn's gthread worker, answering the requests gunicorn refuses itself (a request line
over 4094 bytes, headers too large, a malformed request line or header) with taskbus's JSON
error instead of gunicorn's HTML page, so every HTTP error a client sees has one shape."""

from __future__ import annotations

import json
import socket

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "headers_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def write_json_error(sock: socket.socket, status_int: int, reason: str, mesg: str) -> None:
    """Drop-in for `gunicorn.util.write_error`. The message may quote the client's input: it
    is JSON-escaped (ASCII only) and cut short."""
    error = {"code": CODES.get(status_int, "error"), "message": (mesg or reason)[:300]}
    body = json.dumps({"error": error}).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    util.write_nonblock(sock, head.encode("latin-1") + body)


class JsonErrorWorker(ThreadWorker):
    def init_process(self) -> None:
        util.write_error = write_json_error  # this worker process only: it serves one function
        super().init_process()
