"""ENQUEUE_FSYNC: a 202 only once Redis has fsynced the task to its append-only file.

Why it exists: with `appendfsync everysec`, Redis holds writes back (and still answers them)
while the disk is busy with the previous fsync, so a SIGKILL of the Redis *process* can lose
acknowledged tasks. The chaos scenario `redis_restart` lost 33 of 600 that way under a
concurrent fsync-heavy writer; with this setting it loses none.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from local.embedded import EmbeddedServer
from taskbus.enqueue import Enqueuer
from taskbus.errors import Unavailable
from taskbus.settings import Settings
from taskbus.state.reader import StatusReader
from taskbus.task import TaskSpec
from testkit.functions import fresh_ports, start_function


def _settings(server: EmbeddedServer, **changes: object) -> Settings:
    return Settings(redis_url=server.url, key_prefix="fs", enqueue_fsync=True, **changes)  # type: ignore[arg-type]


def test_the_202_waits_for_the_fsync(fresh_valkey: Callable[..., EmbeddedServer]) -> None:
    settings = _settings(fresh_valkey(appendonly=True))
    store, reader = Enqueuer(settings), StatusReader(settings)
    task_id, status, created = store.enqueue(TaskSpec(type="echo"))
    assert (status, created) == ("queued", True)
    # a Redis that never fsyncs: the enqueue is recorded but cannot be confirmed on disk, so it
    # is not acknowledged (503: ambiguous, like a timeout; an Idempotency-Key retry finds it)
    store.client.config_set("appendfsync", "no")
    with pytest.raises(Unavailable, match="did not fsync"):
        store.enqueue(TaskSpec(type="echo"))
    store.client.config_set("appendfsync", "always")
    batch = store.enqueue_many([(TaskSpec(type="echo", queue=q), None) for q in ("a", "b", "a")])
    assert [status for _, status, _ in batch] == ["queued"] * 3
    assert all(reader.get(t) for t, _, _ in batch)
    assert reader.get(task_id)["status"] == "queued"  # type: ignore[index]


def test_without_an_append_only_file_enqueue_and_ping_say_so(fresh_valkey: Callable[..., EmbeddedServer]) -> None:
    store = Enqueuer(_settings(fresh_valkey(appendonly=False)))
    with pytest.raises(Unavailable, match="no append-only file"):
        store.enqueue(TaskSpec(type="echo"))
    with pytest.raises(Unavailable, match="no append-only file"):
        store.ping()
    StatusReader(store.settings).ping()  # the status function's health: reading works


def test_an_append_only_file_turned_off_while_running_is_a_503_said_in_the_log(
        fresh_valkey: Callable[..., EmbeddedServer], tmp_path: Path) -> None:
    """At start-up the function refuses a Redis without AOF (tests/e2e/test_entrypoints.py); one
    whose AOF is switched off later gets 503s on enqueue and /healthz, and the reason in the log."""
    server = fresh_valkey(appendonly=True)
    proc, url = start_function("enqueue", fresh_ports(_settings(server)), tmp_path)
    try:
        store = Enqueuer(_settings(server))
        store.client.config_set("appendonly", "no")
        store.close()
        with httpx.Client(timeout=5) as http:
            reply = http.post(url + "/tasks", json={"type": "echo"})
            assert reply.status_code == 503 and reply.headers["Retry-After"]
            assert reply.json()["error"]["code"] == "unavailable"
            assert http.get(url + "/healthz").status_code == 503
        # the client is told to retry; the operator is told why, in the function's log
        assert "ENQUEUE_FSYNC is set but Redis runs without appendonly" in proc.output()
    finally:
        proc.stop()
