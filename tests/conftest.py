"""Fixtures: one real Valkey server per test session, real gunicorn functions, real workers.

Tests isolate by queue name (every key of a queue shares its name), never by flushing.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from local.embedded import EmbeddedServer, free_port
from taskbus.settings import Settings
from tests.support import Proc, spawn, start_function, stop

FAST = dict(lease_s=2.0, block_ms=200, backoff_base_s=0.05, backoff_max_s=0.2, grace_s=5.0,
            concurrency=4, handlers="tests.handlers")


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    srv = EmbeddedServer(tmp_path_factory.mktemp("valkey"))
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def base_settings(server: EmbeddedServer) -> Settings:
    return Settings(redis_url=server.url, key_prefix="tb", enqueue_port=free_port(), status_port=free_port(),
                    **FAST)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def functions(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The enqueue and status functions under gunicorn, shared by the session."""
    log_dir = tmp_path_factory.mktemp("functions")
    settings = dataclasses.replace(base_settings, status_base_url=f"http://127.0.0.1:{base_settings.status_port}")
    enqueue, enqueue_url = start_function("enqueue", settings, log_dir)
    status, status_url = start_function("status", settings, log_dir)
    yield {"enqueue": enqueue_url, "status": status_url}
    stop(enqueue)
    stop(status)


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(base_settings: Settings, queue: str) -> Settings:
    return dataclasses.replace(base_settings, queues=(queue,))


@pytest.fixture
def r(server: EmbeddedServer) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(server.url, decode_responses=True)
    yield client
    client.close()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=70) as client:
        yield client


@pytest.fixture
def workers(settings: Settings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., Proc]]:
    """Start worker processes (`python -m worker_fn`) on the test's queue; all are killed after."""
    started: list[Proc] = []

    def start(**changes: object) -> Proc:
        proc = spawn("worker", dataclasses.replace(settings, **changes), tmp_path)  # type: ignore[arg-type]
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        for proc in started:
            print(f"--- {proc.log.name} ---\n{proc.output()[-4000:]}")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    report = yield
    setattr(item, "rep_" + report.when, report)
    return report
