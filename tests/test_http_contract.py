"""The HTTP contract of the enqueue and status functions, over real HTTP against gunicorn.

No worker runs here, so every task stays queued or scheduled. Each test uses its own
queue (the `queue` fixture); only the blog's `/enqueue` route lands in queue "default".
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import redis

from local.embedded import free_port
from taskbus.settings import Settings
from tests.support import Proc, spawn, stop, wait_until

MiB = 1024 * 1024
ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
VIEW_KEYS = {"id", "type", "queue", "status", "attempts", "max_attempts", "created_at", "started_at",
             "finished_at", "result", "error"}
JSON = {"Content-Type": "application/json"}


# --------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    """One client for the module (overrides conftest's per-test one: building a client costs ~50 ms)."""
    with httpx.Client(timeout=70) as client:
        yield client


@dataclasses.dataclass
class RawResponse:
    """A response read off a raw socket; header names are lower-cased."""

    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def raw_request(base_url: str, method: str, target: str, headers: dict[str, str] | None = None,
                body: bytes = b"", timeout: float = 5.0, send_body: bool = True) -> RawResponse:
    """Send bytes exactly as given (no URL normalisation, no header validation) and read one response.

    Headers are encoded as latin-1. Content-Length is added for a body unless given.
    With `send_body=False` only the head is sent: the response must come without the body.
    """
    parts = urlsplit(base_url)
    all_headers = {"Host": parts.netloc, "Connection": "close"}
    if body and not any(name.lower() == "content-length" for name in (headers or {})):
        all_headers["Content-Length"] = str(len(body))
    all_headers.update(headers or {})
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in all_headers.items()) + "\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(head.encode("latin-1") + (body if send_body else b""))
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data:
            data += _recv(sock, deadline)
        head_bytes, rest = data.split(b"\r\n\r\n", 1)
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        response_headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            response_headers[name.strip().lower()] = value.strip()
        length = int(response_headers.get("content-length", "-1"))
        while length < 0 or len(rest) < length:
            chunk = _recv(sock, deadline, eof_ok=length < 0)
            if not chunk:
                break
            rest += chunk
    return RawResponse(status, response_headers, rest[:length] if length >= 0 else rest)


def _recv(sock: socket.socket, deadline: float, eof_ok: bool = False) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("no complete response in time")
    sock.settimeout(remaining)
    chunk = sock.recv(65536)
    if not chunk and not eof_ok:
        raise ConnectionError("connection closed before a complete response")
    return chunk


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, str]:
    """The response is `status` with the JSON error shape; returns the error object."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message"}, body
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, body
    return error


def task_key(task_id: str, prefix: str = "tb") -> str:
    queue, hex_id = task_id.rsplit("~", 1)
    return f"{prefix}:{{{queue}}}:task:{hex_id}"


def stream_key(queue: str) -> str:
    return f"tb:{{{queue}}}:stream"


def delayed_key(queue: str) -> str:
    return f"tb:{{{queue}}}:delayed"


def queue_keys(r: redis.Redis, queue: str) -> set[str]:
    return set(r.keys(f"tb:{{{queue}}}:*"))


def create(http: httpx.Client, functions: dict[str, str], queue: str, headers: dict[str, str] | None = None,
           **fields: Any) -> httpx.Response:
    return http.post(functions["enqueue"] + "/tasks", json={"type": "t", "queue": queue, **fields},
                     headers=headers)


def create_id(http: httpx.Client, functions: dict[str, str], queue: str, **fields: Any) -> str:
    response = create(http, functions, queue, **fields)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def post_raw(http: httpx.Client, url: str, body: bytes, headers: dict[str, str] | None = JSON) -> httpx.Response:
    return http.post(url, content=body, headers=headers)


# --------------------------------------------------------------------------- POST /tasks


def test_create_answers_202_with_id_status_url_and_location(http: httpx.Client, functions: dict[str, str],
                                                             queue: str, r: redis.Redis) -> None:
    response = create(http, functions, queue, type="send.email:v2", payload={"to": "a@b.c", "n": [1, 2.5, None]},
                      max_attempts=3, timeout_s=1.5)
    assert response.status_code == 202, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"id", "status", "status_url"}
    assert body["status"] == "queued"
    assert re.fullmatch(re.escape(queue) + r"~[0-9a-f]{32}", body["id"])
    assert body["status_url"] == f"{functions['status']}/tasks/{body['id']}"
    assert response.headers["location"] == body["status_url"]
    assert r.xlen(stream_key(queue)) == 1
    assert r.zcard(delayed_key(queue)) == 0
    record = r.hgetall(task_key(body["id"]))
    assert record["type"] == "send.email:v2" and record["queue"] == queue and record["status"] == "queued"
    assert json.loads(record["payload"]) == {"to": "a@b.c", "n": [1, 2.5, None]}
    assert record["max_attempts"] == "3" and float(record["timeout_s"]) == 1.5
    assert 0 < r.ttl(task_key(body["id"]))


def test_create_applies_defaults(http: httpx.Client, functions: dict[str, str], queue: str,
                                 r: redis.Redis) -> None:
    task_id = create_id(http, functions, queue)
    record = r.hgetall(task_key(task_id))
    assert json.loads(record["payload"]) == {}
    assert record["max_attempts"] == "5" and float(record["timeout_s"]) == 300.0 and record["attempts"] == "0"
    view = http.get(f"{functions['status']}/tasks/{task_id}").json()
    assert view["max_attempts"] == 5 and view["attempts"] == 0 and view["status"] == "queued"


def test_default_queue_is_default(http: httpx.Client, functions: dict[str, str], r: redis.Redis) -> None:
    response = http.post(functions["enqueue"] + "/tasks", json={"type": "t"})
    assert response.status_code == 202, response.text
    task_id = response.json()["id"]
    assert task_id.startswith("default~")
    assert r.hget(task_key(task_id), "queue") == "default"


@pytest.mark.parametrize("delay, status", [(None, "queued"), (0, "queued"), (0.0, "queued"), (30, "scheduled"),
                                           (0.5, "scheduled")])
def test_delay_makes_a_task_scheduled(http: httpx.Client, functions: dict[str, str], queue: str, r: redis.Redis,
                                      delay: float | None, status: str) -> None:
    fields = {} if delay is None else {"delay_s": delay}
    response = create(http, functions, queue, **fields)
    assert response.status_code == 202, response.text
    assert response.json()["status"] == status
    task_id = response.json()["id"]
    view = http.get(f"{functions['status']}/tasks/{task_id}")
    assert view.status_code == 200 and view.json()["status"] == status
    if status == "scheduled":
        assert r.xlen(stream_key(queue)) == 0 and r.zscore(delayed_key(queue), task_id) is not None
    else:
        assert r.xlen(stream_key(queue)) == 1 and r.zcard(delayed_key(queue)) == 0


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "application/json; charset=UTF8", "Application/JSON"])
def test_json_content_types_accepted(http: httpx.Client, functions: dict[str, str], queue: str,
                                     content_type: str) -> None:
    body = json.dumps({"type": "t", "queue": queue}).encode()
    response = post_raw(http, functions["enqueue"] + "/tasks", body, {"Content-Type": content_type})
    assert response.status_code == 202, response.text


def test_chunked_body_accepted(http: httpx.Client, functions: dict[str, str], queue: str, r: redis.Redis) -> None:
    body = json.dumps({"type": "t", "queue": queue, "payload": {"k": "v" * 1000}}).encode()
    response = http.post(functions["enqueue"] + "/tasks", content=iter([body[:10], body[10:]]), headers=JSON)
    assert response.status_code == 202, response.text
    assert json.loads(r.hget(task_key(response.json()["id"]), "payload")) == {"k": "v" * 1000}


def test_body_just_under_the_limit_accepted(http: httpx.Client, functions: dict[str, str], queue: str) -> None:
    body = padded_body(queue, MiB - 1)
    response = post_raw(http, functions["enqueue"] + "/tasks", body)
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("path", ["/tasks", "/enqueue"])
def test_body_of_exactly_the_limit_accepted(http: httpx.Client, functions: dict[str, str], queue: str,
                                            r: redis.Redis, path: str) -> None:
    body = padded_body(queue, MiB) if path == "/tasks" else padded_object(MiB)
    assert len(body) == MiB
    response = post_raw(http, functions["enqueue"] + path, body)
    stored = r.xlen(stream_key(queue)) if path == "/tasks" else None
    assert response.status_code == 202, (response.status_code, response.text[:200], f"stream entries: {stored}")


def test_payload_nested_to_the_depth_limit_accepted(http: httpx.Client, functions: dict[str, str],
                                                    queue: str) -> None:
    body = b'{"type": "t", "queue": "' + queue.encode() + b'", "payload": ' + b"[" * 63 + b"]" * 63 + b"}"
    response = post_raw(http, functions["enqueue"] + "/tasks", body)  # 64 containers in all
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("path", ["/tasks", "/enqueue"])
@pytest.mark.parametrize("number", [b"18446744073709551616", b"-9223372036854775809"])
def test_big_integer_payload_is_not_a_500(http: httpx.Client, functions: dict[str, str], queue: str,
                                          path: str, number: bytes) -> None:
    body = b'{"type": "t", "queue": "' + queue.encode() + b'", "payload": {"n": ' + number + b"}}"
    response = post_raw(http, functions["enqueue"] + path, body)
    assert response.status_code != 500, response.text
    assert response.status_code in (202, 400, 422), response.text


def padded_object(size: int) -> bytes:
    """A JSON object of exactly `size` bytes (a body for the blog's /enqueue route)."""
    head, tail = b'{"pad": "', b'"}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


def padded_body(queue: str, size: int) -> bytes:
    """A valid task body of exactly `size` bytes."""
    head = b'{"type": "t", "queue": "' + queue.encode() + b'", "payload": "'
    tail = b'"}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


# --------------------------------------------------------------------------- idempotency


def test_idempotency_key_replays_the_first_task(http: httpx.Client, functions: dict[str, str], queue: str,
                                                r: redis.Redis) -> None:
    key = f"order-{uuid.uuid4()}"
    first = create(http, functions, queue, headers={"Idempotency-Key": key}, payload={"n": 1})
    assert first.status_code == 202, first.text
    again = create(http, functions, queue, headers={"Idempotency-Key": key}, payload={"n": 1})
    other_body = create(http, functions, queue, headers={"Idempotency-Key": key}, payload={"n": 2}, delay_s=5)
    for replay in (again, other_body):
        assert replay.status_code == 200, replay.text
        assert replay.json() == first.json()
        assert replay.headers["location"] == first.headers["location"] == first.json()["status_url"]
    assert r.xlen(stream_key(queue)) == 1
    assert r.zcard(delayed_key(queue)) == 0
    assert len(r.keys(f"tb:{{{queue}}}:task:*")) == 1
    fresh = create(http, functions, queue, headers={"Idempotency-Key": key + "-2"})
    assert fresh.status_code == 202 and fresh.json()["id"] != first.json()["id"]


def test_idempotency_key_under_20_concurrent_requests(functions: dict[str, str], queue: str,
                                                      r: redis.Redis) -> None:
    key = f"concurrent-{uuid.uuid4()}"
    barrier = threading.Barrier(20)
    results: list[httpx.Response | BaseException] = []
    lock = threading.Lock()

    def post() -> None:
        try:
            with httpx.Client(timeout=10) as client:
                barrier.wait(timeout=10)
                response: httpx.Response | BaseException = create(client, functions, queue,
                                                                  headers={"Idempotency-Key": key})
        except BaseException as exc:  # reported below
            response = exc
        with lock:
            results.append(response)

    threads = [threading.Thread(target=post) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert len(results) == 20
    errors = [x for x in results if isinstance(x, BaseException)]
    assert not errors, errors
    responses = [x for x in results if isinstance(x, httpx.Response)]
    statuses = sorted(x.status_code for x in responses)
    assert statuses == [200] * 19 + [202], [(x.status_code, x.text) for x in responses]
    assert len({x.json()["id"] for x in responses}) == 1
    assert len({x.headers["location"] for x in responses}) == 1
    assert r.xlen(stream_key(queue)) == 1


@pytest.mark.parametrize("key", ["k", "k" * 255, "a b", "~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}"])
def test_valid_idempotency_keys(functions: dict[str, str], queue: str, key: str) -> None:
    body = json.dumps({"type": "t", "queue": queue}).encode()
    for expected in (202, 200):
        response = raw_request(functions["enqueue"], "POST", "/tasks",
                               {"Content-Type": "application/json", "Idempotency-Key": key}, body)
        assert response.status_code == expected, response.text


def post_with_key(functions: dict[str, str], queue: str, path: str, key: str) -> RawResponse:
    body = json.dumps({"type": "t", "queue": queue}).encode()
    return raw_request(functions["enqueue"], "POST", path,
                       {"Content-Type": "application/json", "Idempotency-Key": key}, body)


@pytest.mark.parametrize("key", ["k" * 256, "k" * 1000, "", " ", "é", "a\tb"],
                         ids=["256 chars", "1000 chars", "empty", "space", "latin-1", "inner tab"])
@pytest.mark.parametrize("path", ["/tasks", "/enqueue"])
def test_invalid_idempotency_key_is_422(functions: dict[str, str], queue: str, r: redis.Redis, key: str,
                                        path: str) -> None:
    before = set(r.keys("*"))
    error = assert_error(post_with_key(functions, queue, path, key), 422, "validation_error")
    assert "Idempotency-Key" in error["message"]
    assert set(r.keys("*")) - before == set()


CONTROL_KEYS = {"inner \\x01": "a\x01b", "only \\x01": "\x01", "DEL": "a\x7fb", "escape": "a\x1bb"}


@pytest.mark.parametrize("key", CONTROL_KEYS.values(), ids=CONTROL_KEYS.keys())
@pytest.mark.parametrize("path", ["/tasks", "/enqueue"])
def test_control_characters_in_idempotency_key_are_refused(functions: dict[str, str], queue: str,
                                                           r: redis.Redis, key: str, path: str) -> None:
    """gunicorn refuses the header before the function runs: a JSON 400, nothing enqueued."""
    before = set(r.keys("*"))
    assert_error(post_with_key(functions, queue, path, key), 400, "bad_request")
    assert set(r.keys("*")) - before == set()


@pytest.mark.parametrize("name", ["enqueue", "status"])
def test_requests_over_gunicorns_limits_get_the_json_error_too(functions: dict[str, str], name: str) -> None:
    """gunicorn answers these itself, before the function: the same JSON shape, not its HTML page."""
    with httpx.Client(timeout=10) as http:
        assert_error(http.get(functions[name] + "/tasks/" + "a" * 5000), 414, "uri_too_long")
        assert_error(http.get(functions[name] + "/healthz", headers={"X-Big": "b" * 9000}), 431, "headers_too_large")
        many = {f"X-H{i}": "1" for i in range(120)}
        assert_error(http.get(functions[name] + "/healthz", headers=many), 431, "headers_too_large")
        # a malformed header; gunicorn quotes the client's bytes, which stay inside the JSON string
        assert_error(http.get(functions[name] + "/healthz", headers={"X-Bad": 'a\x01"}<b>'}), 400, "bad_request")


# --------------------------------------------------------------------------- the blog's POST /enqueue


@pytest.mark.parametrize("path", ["/enqueue", "/enqueue/"])
def test_legacy_enqueue_publishes_a_default_task(http: httpx.Client, functions: dict[str, str], r: redis.Redis,
                                                 path: str) -> None:
    payload = {"hello": "world", "n": [1, 2], "nested": {"ok": True}, "marker": uuid.uuid4().hex}
    response = http.post(functions["enqueue"] + path, json=payload)
    assert response.status_code == 202, response.text
    body = response.json()
    assert {"message", "task_id", "id", "status_url"} <= set(body), body
    assert body["message"] == "Task published"
    assert body["task_id"] == body["id"]
    assert re.fullmatch(r"default~[0-9a-f]{32}", body["id"])
    assert body["status_url"] == f"{functions['status']}/tasks/{body['id']}"
    assert response.headers["location"] == body["status_url"]
    view = http.get(body["status_url"])
    assert view.status_code == 200, view.text
    shown = view.json()
    assert set(shown) == VIEW_KEYS and "payload" not in shown
    assert shown["id"] == body["id"] and shown["status"] == "queued"
    assert shown["type"] == "default" and shown["queue"] == "default"
    assert json.loads(r.hget(task_key(body["id"]), "payload")) == payload


def test_legacy_enqueue_accepts_an_empty_object(http: httpx.Client, functions: dict[str, str]) -> None:
    response = http.post(functions["enqueue"] + "/enqueue/", json={})
    assert response.status_code == 202, response.text
    assert response.json()["message"] == "Task published"


def test_legacy_enqueue_honours_idempotency_key(http: httpx.Client, functions: dict[str, str]) -> None:
    headers = {"Idempotency-Key": f"legacy-{uuid.uuid4()}"}
    first = http.post(functions["enqueue"] + "/enqueue", json={"a": 1}, headers=headers)
    again = http.post(functions["enqueue"] + "/enqueue/", json={"a": 1}, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json()["task_id"] == again.json()["task_id"]


# --------------------------------------------------------------------------- GET /tasks/{id}


@pytest.mark.parametrize("route", ["/tasks/", "/task/"])
def test_status_view_shape_and_reads_change_nothing(http: httpx.Client, functions: dict[str, str], queue: str,
                                                    r: redis.Redis, route: str) -> None:
    before_create = dt.datetime.now(dt.timezone.utc)
    task_id = create_id(http, functions, queue, type="report.build", max_attempts=7, payload={"secret": "x"})
    record_before = r.hgetall(task_key(task_id))
    keys_before = queue_keys(r, queue)
    first = http.get(functions["status"] + route + task_id)
    second = http.get(functions["status"] + route + task_id)
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    assert first.headers["content-type"].startswith("application/json")
    view = first.json()
    assert set(view) == VIEW_KEYS
    assert view == second.json()
    assert view["id"] == task_id and view["type"] == "report.build" and view["queue"] == queue
    assert view["status"] == "queued" and view["attempts"] == 0 and view["max_attempts"] == 7
    assert view["started_at"] is None and view["finished_at"] is None
    assert view["result"] is None and view["error"] is None
    assert ISO_Z.fullmatch(view["created_at"]), view["created_at"]
    created = dt.datetime.fromisoformat(view["created_at"].replace("Z", "+00:00"))
    assert created.tzinfo is not None and created.utcoffset() == dt.timedelta(0)
    assert abs((created - before_create).total_seconds()) < 30
    assert r.hgetall(task_key(task_id)) == record_before
    assert queue_keys(r, queue) == keys_before


def test_wait_answers_at_the_timeout_with_the_current_state(http: httpx.Client, functions: dict[str, str],
                                                            queue: str, r: redis.Redis) -> None:
    task_id = create_id(http, functions, queue)
    record_before, keys_before = r.hgetall(task_key(task_id)), queue_keys(r, queue)
    start = time.monotonic()
    response = http.get(f"{functions['status']}/tasks/{task_id}", params={"wait": "1"})
    elapsed = time.monotonic() - start
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "queued" and set(response.json()) == VIEW_KEYS
    assert 0.95 <= elapsed < 3, elapsed
    assert r.hgetall(task_key(task_id)) == record_before
    assert queue_keys(r, queue) == keys_before


def test_wait_on_a_scheduled_task(http: httpx.Client, functions: dict[str, str], queue: str) -> None:
    task_id = create_id(http, functions, queue, delay_s=60)
    start = time.monotonic()
    response = http.get(f"{functions['status']}/task/{task_id}?wait=0.5")
    assert response.status_code == 200 and response.json()["status"] == "scheduled"
    assert 0.45 <= time.monotonic() - start < 3


@pytest.mark.parametrize("wait", ["0", "", "0.0"])
def test_wait_zero_answers_at_once(http: httpx.Client, functions: dict[str, str], queue: str, wait: str) -> None:
    task_id = create_id(http, functions, queue)
    start = time.monotonic()
    response = http.get(f"{functions['status']}/tasks/{task_id}?wait={wait}")
    assert response.status_code == 200 and response.json()["id"] == task_id
    assert time.monotonic() - start < 0.9


@pytest.mark.parametrize("wait", ["61", "60.001", "-1", "-0.5", "abc", "nan", "NaN", "inf", "-inf", "1e999",
                                  "0x10", "1s", "%00"])
def test_wait_out_of_range_is_422(http: httpx.Client, functions: dict[str, str], queue: str, wait: str) -> None:
    task_id = create_id(http, functions, queue)
    start = time.monotonic()
    response = raw_request(functions["status"], "GET", f"/tasks/{task_id}?wait={wait}")
    error = assert_error(response, 422, "validation_error")
    assert "wait" in error["message"]
    assert time.monotonic() - start < 0.9


def test_unknown_id_is_404_and_creates_nothing(http: httpx.Client, functions: dict[str, str], queue: str,
                                               r: redis.Redis) -> None:
    before = set(r.keys("*"))
    task_id = f"{queue}~{uuid.uuid4().hex}"
    for url in (f"/tasks/{task_id}", f"/task/{task_id}", f"/tasks/{task_id}?wait=1"):
        start = time.monotonic()
        error = assert_error(http.get(functions["status"] + url), 404, "not_found")
        assert time.monotonic() - start < 0.9, url  # an unknown id does not wait
        assert task_id in error["message"]
    assert set(r.keys("*")) - before == set()
    assert r.keys(f"*{task_id.split('~')[1]}*") == []


def test_expired_id_is_404(http: httpx.Client, functions: dict[str, str], queue: str, r: redis.Redis) -> None:
    task_id = create_id(http, functions, queue)
    assert http.get(f"{functions['status']}/tasks/{task_id}").status_code == 200
    r.pexpire(task_key(task_id), 1)
    wait_until(lambda: not r.exists(task_key(task_id)), timeout=5, message="the task hash to expire")
    assert_error(http.get(f"{functions['status']}/tasks/{task_id}"), 404, "not_found")
    assert_error(http.get(f"{functions['status']}/tasks/{task_id}?wait=1"), 404, "not_found")
    assert not r.exists(task_key(task_id))


MALFORMED_TARGETS = {
    "nope": "/tasks/nope",
    "dotdot": "/tasks/..",
    "encoded dotdot": "/tasks/%2e%2e",
    "encoded dotdot upper": "/tasks/%2E%2E",
    "nul": "/tasks/%00",
    "1 KB": "/tasks/" + "a" * 1024,
    "default~XYZ": "/tasks/default~XYZ",
    "uppercase hex": "/tasks/default~" + "A" * 32,
    "short hex": "/tasks/default~" + "a" * 31,
    "slash": "/tasks/default~" + "a" * 32 + "/x",
    "encoded slash": "/tasks/default%2F" + "x~" + "a" * 32,
    "queue with slash": "/tasks/a/b~" + "a" * 32,
    "invalid utf-8": "/tasks/%ff%fe",
    "glob star": "/tasks/*",
    "glob in queue": "/tasks/*~" + "a" * 32,
    "braces": "/tasks/%7Bdefault%7D~" + "a" * 32,
    "legacy route nope": "/task/nope",
    "legacy route nul": "/task/%00",
    "empty id": "/tasks/",
    "with wait": "/tasks/nope?wait=1",
}


@pytest.mark.parametrize("target", MALFORMED_TARGETS.values(), ids=MALFORMED_TARGETS.keys())
def test_malformed_id_is_404_and_touches_no_key(functions: dict[str, str], r: redis.Redis, target: str) -> None:
    before = set(r.keys("*"))
    start = time.monotonic()
    response = raw_request(functions["status"], "GET", target)
    assert_error(response, 404, "not_found")
    assert time.monotonic() - start < 0.9  # never waits, even with ?wait=1
    assert set(r.keys("*")) - before == set()
    assert r.keys("*nope*") == []


# --------------------------------------------------------------------------- 400: bad JSON


def deep(depth: int) -> str:
    return "[" * depth + "]" * depth


BAD_JSON = {
    "malformed": '{"type": "t", "queue": "QQ",',
    "empty body": "",
    "not json": "type=t",
    "trailing garbage": '{"type": "t", "queue": "QQ"} x',
    "NaN": '{"type": "t", "queue": "QQ", "payload": NaN}',
    "Infinity": '{"type": "t", "queue": "QQ", "payload": Infinity}',
    "-Infinity": '{"type": "t", "queue": "QQ", "payload": [-Infinity]}',
    "1e999": '{"type": "t", "queue": "QQ", "payload": 1e999}',
    "1e999 as timeout": '{"type": "t", "queue": "QQ", "timeout_s": 1e999}',
    "duplicate keys": '{"type": "t", "type": "u", "queue": "QQ"}',
    "duplicate nested keys": '{"type": "t", "queue": "QQ", "payload": {"a": 1, "a": 2}}',
    "nesting 65": '{"type": "t", "queue": "QQ", "payload": ' + deep(64) + "}",
    "nesting 65 top": deep(65),
    "nesting 100000": '{"type": "t", "queue": "QQ", "payload": ' + deep(100_000) + "}",
    "nesting 100000 objects": '{"a":' * 100_000 + "1" + "}" * 100_000,
    "lone surrogate": '{"type": "t", "queue": "QQ", "payload": "\\ud800"}',
    "lone surrogate key": '{"type": "t", "queue": "QQ", "payload": {"\\udfff": 1}}',
    "integer too long": '{"type": "t", "queue": "QQ", "payload": ' + "9" * 5000 + "}",
}
BAD_BYTES = {
    "invalid utf-8": b'{"type": "t", "queue": "QQ", "payload": "\xff\xfe"}',
    "truncated utf-8": b'{"type": "t", "queue": "QQ", "payload": "\xc3"}',
    "utf-8 surrogate bytes": b'{"type": "t", "queue": "QQ", "payload": "\xed\xa0\x80"}',
    "utf-8 bom": b'\xef\xbb\xbf{"type": "t", "queue": "QQ"}',
    "utf-16": '{"type": "t", "queue": "QQ"}'.encode("utf-16"),
}
BAD_BODIES = {**{k: v.encode() for k, v in BAD_JSON.items()}, **BAD_BYTES}


@pytest.mark.parametrize("path", ["/tasks", "/enqueue"])
@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bad_json_is_400(http: httpx.Client, functions: dict[str, str], queue: str, r: redis.Redis,
                         body: bytes, path: str) -> None:
    response = post_raw(http, functions["enqueue"] + path, body.replace(b"QQ", queue.encode()))
    assert_error(response, 400, "bad_request")
    assert queue_keys(r, queue) == set()


# --------------------------------------------------------------------------- 415


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None,
                                          "application/json; charset=latin-1", "application/jsonx",
                                          "multipart/form-data; boundary=x", "application/problem+json"])
@pytest.mark.parametrize("path", ["/tasks", "/enqueue"])
def test_wrong_content_type_is_415(http: httpx.Client, functions: dict[str, str], queue: str, r: redis.Redis,
                                   content_type: str | None, path: str) -> None:
    body = json.dumps({"type": "t", "queue": queue}).encode()
    headers = {} if content_type is None else {"Content-Type": content_type}
    request = http.build_request("POST", functions["enqueue"] + path, content=body, headers=headers)
    assert ("content-type" in request.headers) == (content_type is not None)
    assert_error(http.send(request), 415, "unsupported_media_type")
    assert queue_keys(r, queue) == set()


# --------------------------------------------------------------------------- 422


SCHEMA_ERRORS: list[tuple[str, Any, str]] = [
    ("type missing", {}, "type"),
    ("type bad", {"type": "bad type!"}, "type"),
    ("type empty", {"type": ""}, "type"),
    ("type too long", {"type": "t" * 129}, "type"),
    ("type not a string", {"type": 5}, "type"),
    ("type null", {"type": None}, "type"),
    ("queue too long", {"type": "t", "queue": "q" * 129}, "queue"),
    ("queue bad", {"type": "t", "queue": "a b"}, "queue"),
    ("queue with tilde", {"type": "t", "queue": "a~b"}, "queue"),
    ("queue with braces", {"type": "t", "queue": "{x}"}, "queue"),
    ("queue not a string", {"type": "t", "queue": 1}, "queue"),
    ("max_attempts 0", {"type": "t", "max_attempts": 0}, "max_attempts"),
    ("max_attempts 101", {"type": "t", "max_attempts": 101}, "max_attempts"),
    ("max_attempts true", {"type": "t", "max_attempts": True}, "max_attempts"),
    ("max_attempts string", {"type": "t", "max_attempts": "5"}, "max_attempts"),
    ("max_attempts float", {"type": "t", "max_attempts": 2.5}, "max_attempts"),
    ("max_attempts null", {"type": "t", "max_attempts": None}, "max_attempts"),
    ("timeout_s 0", {"type": "t", "timeout_s": 0}, "timeout_s"),
    ("timeout_s -1", {"type": "t", "timeout_s": -1}, "timeout_s"),
    ("timeout_s string", {"type": "t", "timeout_s": "1"}, "timeout_s"),
    ("timeout_s true", {"type": "t", "timeout_s": True}, "timeout_s"),
    ("delay_s -1", {"type": "t", "delay_s": -1}, "delay_s"),
    ("delay_s string", {"type": "t", "delay_s": "0"}, "delay_s"),
    ("delay_s true", {"type": "t", "delay_s": True}, "delay_s"),
    ("unknown field", {"type": "t", "priority": 1}, "priority"),
    ("unknown field id", {"type": "t", "id": "x~" + "a" * 32}, "id"),
    ("body is a list", [{"type": "t"}], "body"),
    ("body is a string", "t", "body"),
    ("body is null", None, "body"),
    ("body is a number", 3, "body"),
]


@pytest.mark.parametrize("body, field", [(b, f) for _, b, f in SCHEMA_ERRORS], ids=[i for i, _, _ in SCHEMA_ERRORS])
def test_schema_violation_is_422_naming_the_field(http: httpx.Client, functions: dict[str, str], queue: str,
                                                  r: redis.Redis, body: Any, field: str) -> None:
    if isinstance(body, dict) and "queue" not in body:
        body = {**body, "queue": queue}
    before = set(r.keys("*"))
    response = post_raw(http, functions["enqueue"] + "/tasks", json.dumps(body).encode())
    error = assert_error(response, 422, "validation_error")
    assert field in error["message"], error
    assert set(r.keys("*")) - before == set()


@pytest.mark.parametrize("body", [[{"a": 1}], "text", None, 1, True], ids=["list", "string", "null", "int", "bool"])
def test_legacy_enqueue_non_object_is_422(http: httpx.Client, functions: dict[str, str], body: Any) -> None:
    response = post_raw(http, functions["enqueue"] + "/enqueue/", json.dumps(body).encode())
    assert "body" in assert_error(response, 422, "validation_error")["message"]


# --------------------------------------------------------------------------- 413


@pytest.mark.parametrize("path", ["/tasks", "/enqueue", "/enqueue/"])
def test_body_over_the_limit_is_413(http: httpx.Client, functions: dict[str, str], queue: str, r: redis.Redis,
                                    path: str) -> None:
    body = padded_body(queue, MiB + 1)
    assert len(body) == MiB + 1
    assert_error(post_raw(http, functions["enqueue"] + path, body), 413, "payload_too_large")
    assert queue_keys(r, queue) == set()


def test_body_over_the_limit_refused_before_content_type(http: httpx.Client, functions: dict[str, str],
                                                         queue: str) -> None:
    body = padded_body(queue, MiB + 1)
    assert_error(post_raw(http, functions["enqueue"] + "/tasks", body, {"Content-Type": "text/plain"}), 413)


@pytest.mark.parametrize("path", ["/tasks", "/enqueue"])
@pytest.mark.parametrize("shape", ["cut mid-json", "valid json then whitespace"])
def test_chunked_body_over_the_limit_is_413(http: httpx.Client, functions: dict[str, str], queue: str,
                                            r: redis.Redis, path: str, shape: str) -> None:
    if shape == "cut mid-json":
        body = padded_body(queue, MiB + 1)
    else:
        body = json.dumps({"type": "t", "queue": queue} if path == "/tasks" else {"q": queue}).encode()
        body += b" " * (MiB + 1 - len(body))
    assert len(body) == MiB + 1
    chunks = iter([body[i:i + 65536] for i in range(0, len(body), 65536)])
    response = http.post(functions["enqueue"] + path, content=chunks, headers=JSON)
    stored = r.xlen(stream_key(queue))
    assert response.status_code == 413, (response.status_code, response.text[:200], f"stream entries: {stored}")
    assert_error(response, 413, "payload_too_large")
    assert queue_keys(r, queue) == set()


@pytest.mark.parametrize("path", ["/tasks", "/enqueue"])
def test_announced_huge_body_gets_413_without_being_sent(functions: dict[str, str], path: str) -> None:
    start = time.monotonic()
    response = raw_request(functions["enqueue"], "POST", path,
                           {"Content-Type": "application/json", "Content-Length": str(50_000_000)},
                           body=b"", timeout=2.0, send_body=False)
    assert time.monotonic() - start < 2
    assert_error(response, 413, "payload_too_large")


# --------------------------------------------------------------------------- routes and methods


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "TRACE", "GET"])
@pytest.mark.parametrize("path", ["/tasks", "/enqueue"])
def test_other_methods_on_enqueue_routes_are_405(http: httpx.Client, functions: dict[str, str], method: str,
                                                 path: str) -> None:
    response = http.request(method, functions["enqueue"] + path)
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in [m.strip() for m in response.headers["allow"].split(",")]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "TRACE"])
def test_other_methods_on_status_route_are_405(http: httpx.Client, functions: dict[str, str], queue: str,
                                               method: str) -> None:
    response = http.request(method, f"{functions['status']}/tasks/{queue}~{uuid.uuid4().hex}")
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in [m.strip() for m in response.headers["allow"].split(",")]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_task_path_on_enqueue_function_is_404_or_405(http: httpx.Client, functions: dict[str, str],
                                                     method: str) -> None:
    response = http.request(method, functions["enqueue"] + "/tasks/x")
    assert response.status_code in (404, 405), response.text
    assert_error(response, response.status_code)


UNKNOWN_PATHS = ["/", "/nope", "/tasks/x/y", "/v1/tasks", "/healthz/x", "/enqueue/x", "/%00",
                 "/tasks/x~" + "a" * 32 + "/events"]


@pytest.mark.parametrize("path", UNKNOWN_PATHS)
@pytest.mark.parametrize("function", ["enqueue", "status"])
def test_unknown_paths_are_404_json(functions: dict[str, str], function: str, path: str) -> None:
    for method in ("GET", "POST"):
        response = raw_request(functions[function], method, path, JSON if method == "POST" else None,
                               b"{}" if method == "POST" else b"")
        assert_error(response, 404, "not_found")


@pytest.mark.parametrize("path", ["/robots.txt", "/favicon.ico"])
@pytest.mark.parametrize("function", ["enqueue", "status"])
def test_framework_reserved_paths_are_404_json(functions: dict[str, str], function: str, path: str) -> None:
    assert_error(raw_request(functions[function], "GET", path), 404)


@pytest.mark.parametrize("function", ["enqueue", "status"])
def test_healthz_is_200(http: httpx.Client, functions: dict[str, str], function: str) -> None:
    response = http.get(functions[function] + "/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


# --------------------------------------------------------------------------- Redis unreachable


@contextlib.contextmanager
def function_pair(base_settings: Settings, log_dir: Path, redis_url: str) -> Iterator[dict[str, str]]:
    """Both functions on fresh ports against `redis_url`; up once they answer any HTTP response
    (`start_function` cannot be used: it waits for /healthz 200, which never comes here)."""
    status_port = free_port()
    settings = dataclasses.replace(base_settings, redis_url=redis_url, enqueue_port=free_port(),
                                   status_port=status_port, status_base_url=f"http://127.0.0.1:{status_port}")
    procs: list[Proc] = []
    urls: dict[str, str] = {}
    try:
        for name in ("enqueue", "status"):
            procs.append(spawn(name, settings, log_dir))
            port = settings.enqueue_port if name == "enqueue" else settings.status_port
            urls[name] = f"http://127.0.0.1:{port}"
        for proc in procs:
            wait_until(lambda proc=proc: answers(proc, urls[proc.name]), timeout=20,  # type: ignore[misc]
                       message=f"{proc.name} to answer HTTP")
        yield urls
    finally:
        for proc in procs:
            stop(proc)


@pytest.fixture(scope="module")
def dead_redis_functions(base_settings: Settings,
                         tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Both functions pointed at a port where nothing listens."""
    with function_pair(base_settings, tmp_path_factory.mktemp("dead-redis"),
                       f"redis://127.0.0.1:{free_port()}/0") as urls:
        yield urls


@pytest.fixture(scope="module")
def hung_redis_functions(base_settings: Settings,
                         tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Both functions pointed at a port that completes TCP handshakes (backlog) but never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
        with function_pair(base_settings, tmp_path_factory.mktemp("hung-redis"),
                           f"redis://127.0.0.1:{port}/0") as urls:
            yield urls


def answers(proc: Proc, base_url: str) -> bool:
    if proc.popen.poll() is not None:
        raise AssertionError(f"{proc.name} exited early:\n{proc.output()}")
    try:
        httpx.get(base_url + "/", timeout=1)  # a route miss: answers without touching Redis
        return True
    except httpx.HTTPError:
        return False


def assert_unavailable(response: httpx.Response, elapsed: float) -> None:
    assert_error(response, 503, "unavailable")
    assert int(response.headers["retry-after"]) >= 1
    assert elapsed < 2, elapsed


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
def test_redis_unreachable_is_503_within_2s(dead_redis_functions: dict[str, str], function: str, method: str,
                                            path: str, body: Any, headers: dict[str, str] | None) -> None:
    with httpx.Client(timeout=10) as client:
        start = time.monotonic()
        response = client.request(method, dead_redis_functions[function] + path, json=body, headers=headers)
        assert_unavailable(response, time.monotonic() - start)


def test_redis_unreachable_still_validates_first(dead_redis_functions: dict[str, str]) -> None:
    """Errors that need no Redis keep their own status while Redis is down."""
    with httpx.Client(timeout=10) as client:
        enqueue, status = dead_redis_functions["enqueue"], dead_redis_functions["status"]
        assert_error(client.post(enqueue + "/tasks", json={"type": "bad type!"}), 422)
        assert_error(client.post(enqueue + "/tasks", content=b"{", headers=JSON), 400)
        assert_error(client.post(enqueue + "/tasks", content=b"{}", headers={"Content-Type": "text/plain"}), 415)
        assert_error(client.get(status + "/tasks/nope"), 404)
        assert_error(client.get(status + "/tasks/x~" + "a" * 32 + "?wait=99"), 422)
        assert_error(client.delete(enqueue + "/tasks"), 405)


def test_hung_redis_is_503_within_2s(hung_redis_functions: dict[str, str]) -> None:
    cases = [("enqueue", "GET", "/healthz", None), ("enqueue", "POST", "/tasks", {"type": "t", "queue": "hung-q"}),
             ("status", "GET", "/healthz", None), ("status", "GET", "/tasks/hung-q~" + "a" * 32, None)]
    results: dict[int, tuple[httpx.Response, float]] = {}

    def call(index: int) -> None:
        function, method, path, body = cases[index]
        with httpx.Client(timeout=20) as client:
            start = time.monotonic()
            response = client.request(method, hung_redis_functions[function] + path, json=body)
            results[index] = (response, time.monotonic() - start)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(25)
    assert len(results) == len(cases)
    for index, (response, elapsed) in sorted(results.items()):
        assert_error(response, 503, "unavailable")  # the status is right; only the delay is not
        assert elapsed < 2, (cases[index], round(elapsed, 2))
