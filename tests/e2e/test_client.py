"""`taskbus.Client`, the Python producer API, against the session's Valkey and a real worker:
the same rules and records as the HTTP functions."""

from __future__ import annotations

import dataclasses
import signal
from collections.abc import Iterator

import pytest

from taskbus import Client, Settings, ValidationError
from taskbus.keys import Keys
from testkit.procs import wait_until


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with Client(settings) as c:
        yield c


def test_a_task_enqueued_from_python_runs_and_is_read_back(client, workers, queue):
    workers()
    job = client.enqueue("echo", {"from": "python"}, queue=queue)
    assert (job.status, job.created) == ("queued", True)
    done = client.wait(job.id, timeout_s=20)
    assert done is not None and (done["status"], done["result"]) == ("succeeded", {"from": "python"})
    assert client.get(job.id) == done


def test_an_idempotency_key_returns_the_first_task(client, queue):
    first = client.enqueue("echo", queue=queue, idempotency_key="order-7")
    again = client.enqueue("echo", {"other": 1}, queue=queue, idempotency_key="order-7")
    assert (again.id, again.created) == (first.id, False)


def test_enqueue_many_in_one_call_and_the_fields_of_each(client, queue):
    jobs = client.enqueue_many([
        {"type": "echo", "payload": {"n": 1}, "queue": queue},
        {"type": "echo", "queue": queue, "delay_s": 60, "max_attempts": 2, "timeout_s": 1.5},
    ])
    assert [j.status for j in jobs] == ["queued", "scheduled"]
    later = client.get(jobs[1].id)
    assert later is not None and (later["max_attempts"], later["status"]) == (2, "scheduled")


@pytest.mark.parametrize("call, field", [
    (lambda c, q: c.enqueue("bad type!", queue=q), "type"),
    (lambda c, q: c.enqueue("echo", queue=q, max_attempts=0), "max_attempts"),
    (lambda c, q: c.enqueue("echo", queue=q, idempotency_key=""), "idempotency_key"),
    (lambda c, q: c.enqueue_many([{"type": "echo", "queue": q}, {"queue": q}]), "tasks[1].type"),
])
def test_a_bad_task_is_refused_naming_its_field_and_nothing_is_written(client, queue, r, settings, call, field):
    with pytest.raises(ValidationError) as refused:
        call(client, queue)
    assert refused.value.field == field
    assert r.xlen(Keys(settings.key_prefix).stream(queue)) == 0, "validated before anything is written"


def test_unknown_ids_read_as_none(client, queue):
    assert client.get(f"{queue}~{'0' * 32}") is None
    assert client.get("not an id") is None


def test_a_worker_advertises_its_types_and_leaves_on_a_clean_stop(workers, settings, queue, r):
    key = Keys(settings.key_prefix).workers(queue)
    worker = workers(consumer_name="advertiser")
    wait_until(lambda: r.hget(key, "advertiser"), message="the worker advertised itself")
    assert "echo" in r.hget(key, "advertiser")
    worker.signal(signal.SIGTERM)
    worker.wait(20)
    assert r.hget(key, "advertiser") is None


def test_client_settings_come_from_the_environment(monkeypatch, settings, queue):
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("KEY_PREFIX", settings.key_prefix)
    with Client() as c:
        job = c.enqueue("echo", queue=queue)
    with Client(dataclasses.replace(settings)) as same:
        assert same.get(job.id) is not None
