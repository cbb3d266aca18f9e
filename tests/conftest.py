"""Fixtures: one real Valkey server (and, for CHANNEL=kafka, one tansu broker) per test session,
real gunicorn functions, real workers; servers of a test's own when it kills or reconfigures one.

Tests isolate by queue name (every key of a queue shares its name), never by flushing.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from local.embedded import EmbeddedKafka, EmbeddedServer, free_port
from taskbus.keys import Keys
from taskbus.settings import Settings
from testkit.functions import FunctionPair, start_functions
from testkit.procs import Proc, spawn
from testkit.settings import FAST, kafka_settings


def _running(server: EmbeddedServer | EmbeddedKafka) -> Iterator[Any]:
    """Start `server`, yield it, stop it after (tansu: SIGKILL, it does not stop promptly on SIGTERM)."""
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServer]:
    yield from _running(EmbeddedServer(tmp_path_factory.mktemp("valkey")))


@pytest.fixture(scope="session")
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedKafka]:
    """A real Kafka-protocol broker (tansu, in memory) for the tests that run CHANNEL=kafka."""
    yield from _running(EmbeddedKafka(tmp_path_factory.mktemp("kafka")))


@pytest.fixture
def fresh_valkey(tmp_path: Path) -> Iterator[Callable[..., EmbeddedServer]]:
    """Start a Valkey of the test's own, for a test that kills, restarts or reconfigures it:
    `fresh_valkey(appendonly=True, appendfsync="everysec")`. Every one is killed after the test."""
    started: list[EmbeddedServer] = []

    def start(appendonly: bool = True, appendfsync: str = "everysec") -> EmbeddedServer:
        srv = EmbeddedServer(tmp_path / f"valkey-{len(started)}", appendonly=appendonly, appendfsync=appendfsync)
        srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.kill()


@pytest.fixture
def fresh_broker(tmp_path: Path) -> Iterator[Callable[[], EmbeddedKafka]]:
    """Start a tansu broker of the test's own (to kill or restart empty); killed after the test."""
    started: list[EmbeddedKafka] = []

    def start() -> EmbeddedKafka:
        broker = EmbeddedKafka(tmp_path / f"kafka-{len(started)}")
        broker.start()
        started.append(broker)
        return broker

    yield start
    for broker in started:
        broker.kill()


@pytest.fixture(scope="session")
def base_settings(server: EmbeddedServer) -> Settings:
    return Settings(redis_url=server.url, key_prefix="tb", enqueue_port=free_port(), status_port=free_port(),
                    **FAST)  # type: ignore[arg-type]


@pytest.fixture
def channel() -> str:
    """The channel under test; modules that run on both override this with params."""
    return "redis"


@pytest.fixture(scope="session")
def function_servers(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory,
                     request: pytest.FixtureRequest) -> Iterator[Callable[[str], dict[str, str]]]:
    """The enqueue and status functions under gunicorn, one pair per channel, started on first use."""
    log_dir = tmp_path_factory.mktemp("functions")
    started: dict[str, FunctionPair] = {}

    def get(channel: str) -> dict[str, str]:
        if channel not in started:
            settings = base_settings
            if channel == "kafka":
                settings = dataclasses.replace(settings, **kafka_settings(request.getfixturevalue("kafka")))  # type: ignore[arg-type]
            started[channel] = start_functions(settings, log_dir)
        return started[channel].urls

    get.log_dir = log_dir  # type: ignore[attr-defined]
    yield get
    for pair in started.values():
        pair.stop()


@pytest.fixture
def functions(function_servers: Callable[[str], dict[str, str]], channel: str,
              request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    yield function_servers(channel)
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:  # the shared functions' errors, for the report
        for log in sorted(Path(function_servers.log_dir).glob("*.log")):  # type: ignore[attr-defined]
            errors = [line for line in log.read_text(errors="replace").splitlines()
                      if '"severity":"ERROR"' in line or "Traceback" in line]
            if errors:
                print(f"--- errors in {log.name} ---\n" + "\n".join(errors[-20:])[-6000:])


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
def keys(settings: Settings) -> Keys:
    """The test's key names (`taskbus.keys`), never spelled out by hand."""
    return Keys(settings.key_prefix)


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
