"""Redis dead or hung: every request that needs it is a 503 `unavailable` with Retry-After
within the documented bound (README: "within about 2 s for Redis"); errors that need no Redis
keep their own status. The real functions, in process: the bound is the Redis client's
timeouts, which no server stands in front of.
"""

from __future__ import annotations

import dataclasses
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from werkzeug.test import TestResponse

from local.embedded import free_port
from taskbus.settings import Settings
from tests.http.conftest import STATUS_BASE, Api
from tests.http.helpers import JSON
from tests.rawhttp import assert_error

BOUND_S = 2.0


@pytest.fixture(scope="module")
def dead_redis(make_api: Callable[..., Api], base_settings: Settings) -> Api:
    """Both functions pointed at a port where nothing listens."""
    return make_api(dataclasses.replace(base_settings, redis_url=f"redis://127.0.0.1:{free_port()}/0",
                                        status_base_url=STATUS_BASE))


@pytest.fixture(scope="module")
def hung_redis(make_api: Callable[..., Api], base_settings: Settings) -> Iterator[Api]:
    """Both functions pointed at a port that completes TCP handshakes (backlog) but never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        yield make_api(dataclasses.replace(base_settings, redis_url=f"redis://127.0.0.1:{port}/0",
                                           status_base_url=STATUS_BASE))


def assert_unavailable(response: TestResponse, elapsed: float) -> None:
    assert_error(response, 503, "unavailable")
    assert int(response.headers["retry-after"]) >= 1
    assert elapsed < BOUND_S, elapsed


DEAD_CASES = [
    ("enqueue", "GET", "/healthz", None, None),
    ("status", "GET", "/healthz", None, None),
    ("enqueue", "POST", "/tasks", {"type": "t", "queue": "dead-q"}, None),
    ("enqueue", "POST", "/tasks", {"type": "t", "queue": "dead-q", "delay_s": 5}, None),
    ("enqueue", "POST", "/tasks", {"type": "t", "queue": "dead-q"}, {"Idempotency-Key": "dead-key"}),
    ("enqueue", "POST", "/enqueue/", {"hello": "world"}, None),
    ("status", "GET", "/tasks/dead-q~" + "a" * 32, None, None),
    ("status", "GET", "/task/dead-q~" + "a" * 32, None, None),
    ("status", "GET", "/tasks/dead-q~" + "a" * 32 + "?wait=1", None, None),
]


@pytest.mark.parametrize("function, method, path, body, headers", DEAD_CASES,
                         ids=[f"{c[0]} {c[1]} {c[2][:24]}{' +key' if c[4] else ''}" for c in DEAD_CASES])
def test_redis_unreachable_is_503_within_2s(dead_redis: Api, function: str, method: str, path: str, body: Any,
                                            headers: dict[str, str] | None) -> None:
    start = time.monotonic()
    response = getattr(dead_redis, function).open(path, method=method, json=body, headers=headers)
    assert_unavailable(response, time.monotonic() - start)


def test_redis_unreachable_still_validates_first(dead_redis: Api) -> None:
    """Errors that need no Redis keep their own status while Redis is down."""
    enqueue, status = dead_redis.enqueue, dead_redis.status
    assert_error(enqueue.post("/tasks", json={"type": "bad type!"}), 422)
    assert_error(enqueue.post("/tasks", data=b"{", headers=JSON), 400)
    assert_error(enqueue.post("/tasks", data=b"{}", headers={"Content-Type": "text/plain"}), 415)
    assert_error(status.get("/tasks/nope"), 404)
    assert_error(status.get("/tasks/x~" + "a" * 32 + "?wait=99"), 422)
    assert_error(enqueue.delete("/tasks"), 405)


def test_hung_redis_is_503_within_2s(hung_redis: Api) -> None:
    cases = [("enqueue", "GET", "/healthz", None), ("enqueue", "POST", "/tasks", {"type": "t", "queue": "hung-q"}),
             ("status", "GET", "/healthz", None), ("status", "GET", "/tasks/hung-q~" + "a" * 32, None)]
    results: dict[int, tuple[TestResponse, float]] = {}

    def call(index: int) -> None:  # at the same time, each with its own client: 4 threads of one server
        function, method, path, body = cases[index]
        client = getattr(hung_redis, function).application.test_client()
        start = time.monotonic()
        response = client.open(path, method=method, json=body)
        results[index] = (response, time.monotonic() - start)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(25)
    assert len(results) == len(cases)
    for index, (response, elapsed) in sorted(results.items()):
        assert_error(response, 503, "unavailable")  # the status is right; only the delay is not
        assert elapsed < BOUND_S, (cases[index], round(elapsed, 2))
