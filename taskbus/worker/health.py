"""`GET /healthz` of a worker, on `PORT` when it is set.

Why: Cloud Run (and other platforms that probe a port) only keeps a service that listens, and an
operator wants to see a worker that cannot reach Redis or its channel as unhealthy. A tiny
threaded stdlib server is enough: it answers probes, never tasks.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

Problem = Callable[[], "str | None"]  # None: healthy; else why not


class HealthServer:
    """Answers `GET /healthz` with 200 `{"status": "ok"}` while `problem()` is None, else 503
    `{"error": {"code": "unavailable", "message": <problem>}}`; every other path is a JSON 404."""

    def __init__(self, host: str, port: int, problem: Problem) -> None:
        self.problem = problem
        handler = _handler_for(self)
        self.httpd = http.server.ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="taskbus-health", daemon=True)

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        log.info("worker health on /healthz", extra={"fields": {"port": self.port}})
        return self

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def answer(self, path: str) -> tuple[int, dict[str, object]]:
        if path.split("?", 1)[0] != "/healthz":
            return 404, {"error": {"code": "not_found", "message": "no such route"}}
        try:
            problem = self.problem()
        except Exception as exc:  # noqa: BLE001 - a probe must answer, whatever the check raised
            problem = f"{type(exc).__name__}: {exc}"
        if problem is None:
            return 200, {"status": "ok"}
        return 503, {"error": {"code": "unavailable", "message": problem}}


def _handler_for(server: HealthServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "taskbus-worker"
        sys_version = ""

        def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
            status, body = server.answer(self.path)
            self._send(status, body)

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def _not_allowed(self) -> None:
            self._send(405, {"error": {"code": "method_not_allowed", "message": f"{self.command} is not allowed here"}})

        do_POST = do_PUT = do_PATCH = do_DELETE = _not_allowed  # noqa: N815

        def _send(self, status: int, body: dict[str, object]) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
            """Probes every few seconds would flood the log: keep them at debug."""
            log.debug(format % args)

    return Handler
