"""`GET /healthz` and `GET /metrics` of a worker, on `PORT`, or `METRICS_PORT` when only that is set.

Why: Cloud Run (and other platforms that probe a port) only keeps a service that listens, and an
operator wants to see a worker that cannot reach Redis or its channel as unhealthy. A tiny
threaded stdlib server is enough: it answers probes and scrapes, never tasks. /metrics is open to
loopback clients (a sidecar) and needs one of API_KEYS from anyone else when they are set.
"""

from __future__ import annotations

import hmac
import http.server
import json
import logging
import threading
from collections.abc import Callable, Sequence

from taskbus.telemetry.metrics import CONTENT_TYPE, WorkerMetrics, loopback

log = logging.getLogger(__name__)

Problem = Callable[[], "str | None"]  # None: healthy; else why not


class HealthServer:
    """Answers `GET /healthz` with 200 `{"status": "ok"}` while `problem()` is None, else 503
    `{"error": {"code": "unavailable", "message": <problem>}}`; every other path is a JSON 404."""

    def __init__(self, host: str, port: int, problem: Problem, metrics: WorkerMetrics | None = None,
                 keys: Sequence[str] = ()) -> None:
        self.problem = problem
        self.metrics = metrics
        self._keys = [key.encode() for key in keys]
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

    def scrape(self, client: str, authorization: str) -> tuple[int, bytes] | None:
        """`GET /metrics`: None when this server has none (a 404), else the status and body."""
        if self.metrics is None:
            return None
        if self._keys and not loopback(client):
            scheme, _, given = authorization.partition(" ")
            token = given.strip().encode("utf-8", "replace")
            matched = [hmac.compare_digest(token, key) for key in self._keys]  # each compared: constant time
            if scheme.lower() != "bearer" or not any(matched):
                error = {"error": {"code": "unauthorized", "message": "a valid API key is required"}}
                return 401, json.dumps(error).encode()
        return 200, self.metrics.render()

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
            if self.path.split("?", 1)[0] == "/metrics":
                scraped = server.scrape(self.client_address[0], self.headers.get("Authorization", ""))
                if scraped is not None:
                    status, data = scraped
                    self._write(status, data, CONTENT_TYPE if status == 200 else "application/json")
                    return
            status, body = server.answer(self.path)
            self._send(status, body)

        def do_HEAD(self) -> None:  # noqa: N802
            self.do_GET()

        def _not_allowed(self) -> None:
            self._send(405, {"error": {"code": "method_not_allowed", "message": f"{self.command} is not allowed here"}})

        do_POST = do_PUT = do_PATCH = do_DELETE = _not_allowed  # noqa: N815

        def _send(self, status: int, body: dict[str, object]) -> None:
            self._write(status, json.dumps(body).encode(), "application/json")

        def _write(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's signature
            """Probes every few seconds would flood the log: keep them at debug."""
            log.debug(format % args)

    return Handler
