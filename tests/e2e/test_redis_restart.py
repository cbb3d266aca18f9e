"""The worker and the functions ride out a Redis restart (kill -9). The server fsyncs every
write (`appendfsync always`), so the state the test saw before the crash is the state Redis
restarts with: no waiting for a background fsync."""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
import redis

from taskbus.settings import Settings
from testkit.functions import start_functions
from testkit.procs import spawn, wait_until
from testkit.settings import FAST


@pytest.mark.timeout(90)
def test_worker_survives_server_restart_and_keeps_computed_result(fresh_valkey, tmp_path):
    own_server = fresh_valkey(appendonly=True, appendfsync="always")
    queue = "restart"
    settings = Settings(redis_url=own_server.url, key_prefix="rs", queues=(queue,), **FAST)  # type: ignore[arg-type]
    functions = start_functions(settings, tmp_path)
    enqueue_url, status_url = functions.enqueue, functions.status
    worker = spawn("worker", settings, tmp_path)
    r = redis.Redis.from_url(own_server.url, decode_responses=True)
    key = f"exec-{uuid.uuid4().hex}"
    try:
        with httpx.Client(timeout=10) as http:
            def submit(seconds: float) -> str:
                reply = http.post(enqueue_url + "/tasks", json={"type": "record", "queue": queue,
                                                               "payload": {"key": key, "seconds": seconds}})
                assert reply.status_code == 202, reply.text
                return str(reply.json()["id"])

            def state(task_id: str) -> str:
                return str(http.get(f"{status_url}/tasks/{task_id}").json()["status"])

            slow = submit(3.0)
            wait_until(lambda: state(slow) == "running", message="slow task running")  # on disk: fsync always
            own_server.kill()
            began = time.monotonic()
            down = http.post(enqueue_url + "/tasks", json={"type": "echo", "queue": queue})
            assert down.status_code == 503 and "Retry-After" in down.headers
            assert time.monotonic() - began < 2.5
            assert http.get(enqueue_url + "/healthz").status_code == 503
            time.sleep(1.0)  # the outage itself: keep Redis down across the task's finish
            own_server.start()
            wait_until(lambda: http.get(enqueue_url + "/healthz").status_code == 200, message="healthz back")
            after = submit(0)
            wait_until(lambda: state(after) == "succeeded", timeout=20, message="new task runs after restart")
            wait_until(lambda: state(slow) == "succeeded", timeout=20, message="slow task result written")
            task = http.get(f"{status_url}/tasks/{slow}").json()
            assert task["attempts"] == 1, "the result computed during the outage was written, not recomputed"
            assert r.hget(key, slow) == "1"
            assert "Redis unavailable" in worker.output()
    finally:
        worker.kill()
        functions.stop()
        r.close()
