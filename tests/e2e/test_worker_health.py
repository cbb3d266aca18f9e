"""A worker with PORT set answers `GET /healthz` (Cloud Run services must listen): 200 while it
reaches Redis, 503 in the JSON error shape once its Redis is killed, 200 again after Redis is back
on its port. Without PORT it listens on nothing."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx

from local.embedded import EmbeddedServer, free_port
from taskbus.settings import Settings
from testkit.procs import spawn, wait_until


def health(url: str) -> tuple[int, dict[str, object]]:
    try:
        reply = httpx.get(url, timeout=3)
    except httpx.HTTPError:
        return 0, {}
    return reply.status_code, reply.json()


def test_worker_healthz_follows_redis(fresh_valkey: Callable[..., EmbeddedServer], tmp_path: Path) -> None:
    valkey = fresh_valkey()
    port = free_port()
    settings = Settings(redis_url=valkey.url, key_prefix="health", port=port)
    worker = spawn("worker", settings, tmp_path)  # taskbus worker
    url = f"http://127.0.0.1:{port}/healthz"
    try:
        wait_until(lambda: health(url) == (200, {"status": "ok"}), timeout=15, message="healthz 200", proc=worker)
        assert httpx.post(url, timeout=3).status_code == 405
        valkey.kill()
        status, body = wait_until(lambda: (lambda h: h if h[0] == 503 else None)(health(url)), timeout=15,
                                  message="healthz 503 with Redis down", proc=worker)
        error = body["error"]
        assert isinstance(error, dict) and error["code"] == "unavailable" and error["message"]
        again = EmbeddedServer(valkey.data_dir, port=valkey.port)
        again.start()
        try:
            wait_until(lambda: health(url)[0] == 200, timeout=20, message="healthz 200 after Redis is back",
                       proc=worker)
        finally:
            again.kill()
    finally:
        worker.stop()


def test_without_port_the_worker_listens_on_nothing(server: EmbeddedServer, tmp_path: Path) -> None:
    settings = Settings(redis_url=server.url, key_prefix="health")
    worker = spawn("worker", settings, tmp_path)
    try:
        wait_until(lambda: "worker starting" in worker.output(), timeout=15, message="worker start", proc=worker)
        listening = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, timeout=10).stdout
        assert f"pid={worker.pid}," not in listening, listening
        assert "worker health" not in worker.output()
    finally:
        worker.stop()
