"""Fixtures: one real Valkey server (and, for CHANNEL=kafka, one tansu broker) per test session,
real gunicorn functions, real workers.

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

from local.embedded import EmbeddedKafka, EmbeddedServer, free_port
from taskbus.settings import Settings
from tests.support import Proc, kafka_settings, spawn, start_function, stop

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
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    """A real Kafka-protocol broker (tansu, in memory) for the tests that run CHANNEL=kafka."""
    broker = EmbeddedKafka(tmp_path_factory.mktemp("kafka"))
    broker.start()
    yield broker
    broker.kill()


@pytest.fixture
def channel() -> str:
    """The channel under test; modules that run on both override this with params."""
    return "redis"


@pytest.fixture(scope="session")
def function_servers(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory,
                     request: pytest.FixtureRequest) -> Iterator[Callable[[str], dict[str, str]]]:
    """The enqueue and status functions under gunicorn, one pair per channel, started on first use."""
    log_dir = tmp_path_factory.mktemp("functions")
    started: dict[str, dict[str, str]] = {}
    procs: list[Proc] = []

    def get(channel: str) -> dict[str, str]:
        if channel not in started:
            settings = base_settings
            if channel == "kafka":
                settings = dataclasses.replace(settings, enqueue_port=free_port(), status_port=free_port(),
                                               **kafka_settings(request.getfixturevalue("kafka")))  # type: ignore[arg-type]
            settings = dataclasses.replace(settings, status_base_url=f"http://127.0.0.1:{settings.status_port}")
            enqueue, enqueue_url = start_function("enqueue", settings, log_dir)
            status, status_url = start_function("status", settings, log_dir)
            procs.extend((enqueue, status))
            started[channel] = {"enqueue": enqueue_url, "status": status_url}
        return started[channel]

    yield get
    for proc in procs:
        stop(proc)


@pytest.fixture
def functions(function_servers: Callable[[str], dict[str, str]], channel: str) -> dict[str, str]:
    return function_servers(channel)


@pytest.fixture
def queue() -> str:
    return f"q-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(base_settings: Settings, queue: str, channel: str, request: pytest.FixtureRequest) -> Settings:
    settings = dataclasses.replace(base_settings, queues=(queue,))
    if channel == "kafka":
        settings = dataclasses.replace(settings, **kafka_settings(request.getfixturevalue("kafka")))  # type: ignore[arg-type]
    return settings


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
