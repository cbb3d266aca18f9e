"""Traces end to end: real gunicorn functions and worker processes exporting over OTLP/HTTP to a
real receiver (testkit.otlp), which decodes the exporter's protobuf. A caller's `traceparent`
reaches the enqueue's PRODUCER span, each attempt's CONSUMER span, a handler's own span and
its log lines; the worker flushes its spans on SIGTERM."""

from __future__ import annotations

import dataclasses
import json
import secrets
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from taskbus.admin.redrive import Redrives
from taskbus.enqueue import Enqueuer
from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.task import TaskSpec
from testkit.client import finished
from testkit.functions import fresh_ports, function_pair, start_function
from testkit.otlp import Collector, Span
from testkit.procs import Proc, spawn
from testkit.signing import sign_github

PROJECT = "tb-test-project"
GITHUB_SECRET = "tracing-test-secret"
FAST_EXPORT = {"OTEL_BSP_SCHEDULE_DELAY": "50"}  # ms between the batch processor's exports


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    with Collector() as c:
        yield c


def traced(settings: Settings, collector: Collector) -> Settings:
    return dataclasses.replace(settings, otel_exporter_otlp_endpoint=collector.url, google_cloud_project=PROJECT)


@pytest.fixture(scope="module")
def traced_functions(base_settings: Settings, collector: Collector,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Enqueue and status functions with tracing on (their own pair: the session's has it off)."""
    hooks = {"WEBHOOK_SOURCES": "github", "WEBHOOK_GITHUB_SECRET": GITHUB_SECRET}
    with function_pair(traced(dataclasses.replace(base_settings, web_workers=1), collector),
                       tmp_path_factory.mktemp("traced"), env=FAST_EXPORT,
                       enqueue_env=hooks) as pair:
        yield pair.urls


@pytest.fixture
def traced_worker(settings: Settings, collector: Collector, tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(**env: str) -> Proc:
        proc = spawn("worker", traced(settings, collector), tmp_path, **{**FAST_EXPORT, **env})
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


def caller() -> tuple[str, str, dict[str, str]]:
    """A caller's trace id, span id and the `traceparent` header that carries them (sampled)."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return trace_id, span_id, {"traceparent": f"00-{trace_id}-{span_id}-01"}


def kind(spans: list[Span], wanted: str) -> list[Span]:
    return [s for s in spans if s.kind == wanted]


def test_the_enqueue_and_each_attempt_join_the_callers_trace(http: httpx.Client, traced_functions: dict[str, str],
                                                            traced_worker: Callable[..., Proc], collector: Collector,
                                                            queue: str, r: redis.Redis, keys: Keys) -> None:
    traced_worker()
    trace_id, parent, headers = caller()
    body = {"type": "fail", "queue": queue, "payload": {"succeed_on_attempt": 3}, "max_attempts": 3}
    response = http.post(traced_functions["enqueue"] + "/tasks", json=body, headers=headers)
    assert response.status_code == 202, response.text
    task_id = response.json()["id"]
    poll = http.get(f"{traced_functions['status']}/tasks/{task_id}", params={"wait": 20},
                    headers={"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01"})
    assert poll.json()["status"] == "succeeded"

    spans = collector.wait_for(lambda found: len(kind(found, "CONSUMER")) == 3 and any(s.name == "wait" for s in found),
                               trace_id, message="a send, three process and a wait span")
    [send] = kind(spans, "PRODUCER")
    assert (send.name, send.parent_id, send.service) == (f"send {queue}", parent, "taskbus-enqueue")
    assert send.attributes == {"messaging.system": "taskbus", "messaging.destination.name": queue,
                               "messaging.operation.type": "send", "messaging.operation.name": "send",
                               "messaging.message.id": task_id}
    assert r.hget(keys.task(task_id), "traceparent") == f"00-{trace_id}-{send.span_id}-01"

    attempts = sorted(kind(spans, "CONSUMER"), key=lambda s: s.attributes["taskbus.task.attempt"])
    for number, attempt in enumerate(attempts, start=1):
        assert (attempt.name, attempt.service) == (f"process {queue}", "taskbus-worker")
        assert attempt.parent_id == send.span_id, "retried attempts are siblings under the producer span"
        assert attempt.links == [(trace_id, send.span_id)]
        assert {k: v for k, v in attempt.attributes.items() if k.startswith("messaging.")} == {
            "messaging.system": "taskbus", "messaging.destination.name": queue, "messaging.message.id": task_id,
            "messaging.operation.type": "process", "messaging.operation.name": "process"}
        assert attempt.attributes["taskbus.task.attempt"] == number
    assert [a.status for a in attempts] == ["ERROR", "ERROR", "UNSET"]
    assert [a.attributes["taskbus.outcome"] for a in attempts] == ["retry", "retry", "succeeded"]
    exceptions = [[e["exception.type"] for name, e in a.events if name == "exception"] for a in attempts]
    assert exceptions == [["RuntimeError"], ["RuntimeError"], []]

    [wait] = [s for s in spans if s.name == "wait"]
    assert (wait.service, wait.attributes["messaging.message.id"]) == ("taskbus-status", task_id)


def test_a_handlers_span_is_a_child_of_its_attempt_and_its_log_lines_carry_the_trace(
        http: httpx.Client, traced_functions: dict[str, str], traced_worker: Callable[..., Proc],
        collector: Collector, queue: str) -> None:
    worker = traced_worker(OTEL_BSP_SCHEDULE_DELAY="600000")  # only the flush at SIGTERM sends its spans
    trace_id, parent, headers = caller()
    batch = {"tasks": [{"type": "traced", "queue": queue, "payload": {"n": n}} for n in range(2)]}
    response = http.post(traced_functions["enqueue"] + "/tasks/batch", json=batch, headers=headers)
    ids = [result["id"] for result in response.json()["results"]]
    assert [finished(http, traced_functions, task_id)["status"] for task_id in ids] == ["succeeded"] * 2
    assert not kind(collector.of_trace(trace_id), "CONSUMER"), "the worker exports only at its flush"

    worker.signal(signal.SIGTERM)
    assert worker.wait(timeout=8) == 0
    spans = collector.wait_for(lambda found: len([s for s in found if s.name == "handler work"]) == 2, trace_id,
                               timeout=5, message="the worker's spans, flushed at SIGTERM")
    [send] = kind(spans, "PRODUCER")
    assert (send.name, send.parent_id, send.attributes["messaging.batch.message_count"]) == (f"send {queue}", parent, 2)
    process = {s.span_id: s for s in kind(spans, "CONSUMER")}
    assert sorted(s.attributes["messaging.message.id"] for s in process.values()) == sorted(ids)
    assert all(s.parent_id == send.span_id for s in process.values())
    handler_spans = [s for s in spans if s.name == "handler work"]
    assert {s.parent_id for s in handler_spans} == set(process), "each handler span is a child of its attempt"

    lines = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
    inside = [x for x in lines if x["message"] == "inside the handler's span"]
    assert sorted(x["task_id"] for x in inside) == sorted(ids)
    for line in inside:
        assert (line["type"], line["queue"], line["attempt"]) == ("traced", queue, 1), "the task's fields"
        assert line["severity"] == "INFO" and line["time"].endswith("Z")
        assert line["logging.googleapis.com/trace"] == f"projects/{PROJECT}/traces/{trace_id}"
        assert line["logging.googleapis.com/trace_sampled"] is True
        assert line["trace_id"] == trace_id
        assert line["span_id"] == line["logging.googleapis.com/spanId"]
    assert {x["span_id"] for x in inside} == {s.span_id for s in handler_spans}
    outside = [x for x in lines if x.get("task_id") in ids and x["message"] != "inside the handler's span"]
    assert outside and all("trace_id" not in x and "severity" in x for x in outside), "no span, no trace fields"


def test_a_webhooks_verification_and_enqueue_are_spans_of_the_callers_trace(
        http: httpx.Client, traced_functions: dict[str, str], collector: Collector) -> None:
    trace_id, parent, headers = caller()
    body = json.dumps({"ref": "refs/heads/main"}).encode()
    signed = sign_github(GITHUB_SECRET, body, delivery=secrets.token_hex(8))
    response = http.post(traced_functions["enqueue"] + "/hooks/github", content=body,
                         headers={**headers, **signed, "Content-Type": "application/json"})
    assert response.status_code == 202, response.text
    spans = collector.wait_for(lambda found: len(found) == 2, trace_id, message="a verify and a send span")
    verify, send = sorted(spans, key=lambda s: s.kind)
    assert (verify.name, verify.kind, verify.parent_id, verify.status) == ("verify github", "INTERNAL", parent, "UNSET")
    assert verify.attributes == {"taskbus.webhook.source": "github"}
    assert (send.kind, send.parent_id, send.attributes["messaging.message.id"]) == ("PRODUCER", parent,
                                                                                   response.json()["id"])


def test_a_redrive_step_is_a_span_and_the_redriven_attempt_stays_in_the_enqueues_trace(
        http: httpx.Client, traced_functions: dict[str, str], traced_worker: Callable[..., Proc],
        collector: Collector, settings: Settings, queue: str) -> None:
    traced_worker()
    trace_id, _, headers = caller()
    body = {"type": "fail", "queue": queue, "payload": {}, "max_attempts": 1}
    task_id = http.post(traced_functions["enqueue"] + "/tasks", json=body, headers=headers).json()["id"]
    assert finished(http, traced_functions, task_id)["status"] == "failed"
    with Redrives(settings) as redrives:
        redrive_id = redrives.create(queue, actor="test")["id"]
    [step, *_] = collector.wait_for(lambda found: any(s.attributes.get("taskbus.redrive.id") == redrive_id
                                                      for s in found), name=f"redrive {queue}",
                                    message="the re-drive step's span")
    assert (step.kind, step.service, step.attributes["messaging.destination.name"]) == ("INTERNAL", "taskbus-worker",
                                                                                        queue)
    attempts = collector.wait_for(lambda found: len(kind(found, "CONSUMER")) == 2, trace_id,
                                  message="the re-driven attempt's span")
    [send] = kind(attempts, "PRODUCER")
    assert [a.parent_id for a in kind(attempts, "CONSUMER")] == [send.span_id] * 2


@pytest.mark.parametrize("path", ["asgi", "wsgi"])
def test_a_gunicorn_worker_sends_its_buffered_spans_as_it_stops(http: httpx.Client, base_settings: Settings,
                                                               collector: Collector, tmp_path: Path, path: str) -> None:
    settings = fresh_ports(traced(base_settings, collector), web_workers=1)
    proc, url = start_function("enqueue", settings, tmp_path,
                               env={"OTEL_BSP_SCHEDULE_DELAY": "600000", "SERVE_PATH": path})
    trace_id, parent, headers = caller()
    try:
        response = http.post(url + "/tasks", json={"type": "echo", "queue": "traced-exit"}, headers=headers)
        assert response.status_code == 202, response.text
        assert collector.of_trace(trace_id) == [], "nothing is sent before the exit (a 600 s export delay)"
    finally:
        proc.stop(timeout=10)
    [send] = collector.wait_for(lambda found: len(found) == 1, trace_id, timeout=5, message="the flush at exit")
    assert (send.kind, send.parent_id) == ("PRODUCER", parent)


def test_tracing_off_stores_no_traceparent_and_on_stores_the_given_one(settings: Settings, r: redis.Redis,
                                                                      keys: Keys, queue: str) -> None:
    enqueuer = Enqueuer(settings)
    try:
        spec = TaskSpec(type="echo", payload={}, queue=queue, max_attempts=1, timeout_s=5.0)
        off, _, _ = enqueuer.enqueue(spec)
        given = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
        on = [task_id for task_id, _, _ in enqueuer.enqueue_many([(spec, None), (spec, None)], traceparent=given)]
    finally:
        enqueuer.close()
    assert r.hget(keys.task(off), "traceparent") is None
    assert [r.hget(keys.task(task_id), "traceparent") for task_id in on] == [given, given]
    assert r.hget(keys.task(on[0]), "type") == "echo"  # the extra ARGV shifted no task field
