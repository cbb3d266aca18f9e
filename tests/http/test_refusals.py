"""What the functions refuse, through their test clients: 400 (bad JSON), 413 (by
Content-Length), 415, 422, 404 and 405, each with the JSON error shape and nothing enqueued.

What only a real server can show (413 before the body is read, chunked bodies, gunicorn's own
400/414/431, raw request targets) is in tests/e2e/test_server_limits.py.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import redis
from werkzeug.test import EnvironBuilder

from tests.http.conftest import Api
from tests.http.helpers import JSON, MiB, padded_body, post_raw, queue_keys
from tests.rawhttp import assert_error

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
def test_bad_json_is_400(api: Api, queue: str, r: redis.Redis, body: bytes, path: str) -> None:
    response = post_raw(api.enqueue, path, body.replace(b"QQ", queue.encode()))
    assert_error(response, 400, "bad_request")
    assert queue_keys(r, queue) == set()


# --------------------------------------------------------------------------- 415


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None,
                                          "application/json; charset=latin-1", "application/jsonx",
                                          "multipart/form-data; boundary=x", "application/problem+json"])
@pytest.mark.parametrize("path", ["/tasks", "/enqueue"])
def test_wrong_content_type_is_415(api: Api, queue: str, r: redis.Redis, content_type: str | None,
                                   path: str) -> None:
    body = json.dumps({"type": "t", "queue": queue}).encode()
    headers = {} if content_type is None else {"Content-Type": content_type}
    request = EnvironBuilder(path=path, method="POST", data=body, headers=headers)
    assert ("CONTENT_TYPE" in request.get_environ()) == (content_type is not None)
    assert_error(api.enqueue.open(request), 415, "unsupported_media_type")
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
    ("priority 10", {"type": "t", "priority": 10}, "priority"),
    ("priority -1", {"type": "t", "priority": -1}, "priority"),
    ("priority string", {"type": "t", "priority": "9"}, "priority"),
    ("priority true", {"type": "t", "priority": True}, "priority"),
    ("priority float", {"type": "t", "priority": 2.5}, "priority"),
    ("priority null", {"type": "t", "priority": None}, "priority"),
    ("unknown field", {"type": "t", "urgency": 1}, "urgency"),
    ("unknown field id", {"type": "t", "id": "x~" + "a" * 32}, "id"),
    ("body is a list", [{"type": "t"}], "body"),
    ("body is a string", "t", "body"),
    ("body is null", None, "body"),
    ("body is a number", 3, "body"),
]


@pytest.mark.parametrize("body, field", [(b, f) for _, b, f in SCHEMA_ERRORS], ids=[i for i, _, _ in SCHEMA_ERRORS])
def test_schema_violation_is_422_naming_the_field(api: Api, queue: str, r: redis.Redis, body: Any,
                                                  field: str) -> None:
    if isinstance(body, dict) and "queue" not in body:
        body = {**body, "queue": queue}
    before = set(r.keys("*"))
    response = post_raw(api.enqueue, "/tasks", json.dumps(body).encode())
    error = assert_error(response, 422, "validation_error")
    assert field in error["message"], error
    assert set(r.keys("*")) - before == set()


@pytest.mark.parametrize("body", [[{"a": 1}], "text", None, 1, True], ids=["list", "string", "null", "int", "bool"])
def test_legacy_enqueue_non_object_is_422(api: Api, body: Any) -> None:
    response = post_raw(api.enqueue, "/enqueue/", json.dumps(body).encode())
    assert "body" in assert_error(response, 422, "validation_error")["message"]


@pytest.mark.parametrize("key", ["k" * 256, "k" * 1000, "", " ", "é", "a\tb"],
                         ids=["256 chars", "1000 chars", "empty", "space", "latin-1", "inner tab"])
@pytest.mark.parametrize("path", ["/tasks", "/enqueue"])
def test_invalid_idempotency_key_is_422(api: Api, queue: str, r: redis.Redis, key: str, path: str) -> None:
    """(gunicorn hands a latin-1 header byte on as this same character: the e2e tier sends one raw.)"""
    before = set(r.keys("*"))
    body = json.dumps({"type": "t", "queue": queue}).encode()
    error = assert_error(post_raw(api.enqueue, path, body, {**JSON, "Idempotency-Key": key}), 422, "validation_error")
    assert "Idempotency-Key" in error["message"]
    assert set(r.keys("*")) - before == set()


@pytest.mark.parametrize("body", [{"tasks": []}, {"tasks": {}}, {"task": []}, [], {"tasks": [{}] * 1001}],
                         ids=["empty", "not a list", "no tasks", "not an object", "1001 tasks"])
def test_batch_shape_errors_are_422(api: Api, body: Any) -> None:
    assert_error(api.enqueue.post("/tasks/batch", json=body), 422, "validation_error")


# --------------------------------------------------------------------------- 413 by Content-Length


@pytest.mark.parametrize("path", ["/tasks", "/enqueue", "/enqueue/"])
def test_body_over_the_limit_is_413(api: Api, queue: str, r: redis.Redis, path: str) -> None:
    body = padded_body(queue, MiB + 1)
    assert len(body) == MiB + 1
    assert_error(post_raw(api.enqueue, path, body), 413, "payload_too_large")
    assert queue_keys(r, queue) == set()


def test_body_over_the_limit_refused_before_content_type(api: Api, queue: str) -> None:
    body = padded_body(queue, MiB + 1)
    assert_error(post_raw(api.enqueue, "/tasks", body, {"Content-Type": "text/plain"}), 413)


def test_two_hundred_thousand_keys_is_over_the_limit(api: Api) -> None:
    payload = "{" + ",".join(f'"k{i}":0' for i in range(200_000)) + "}"
    body = '{"type":"echo","queue":"abuse","payload":' + payload + "}"
    assert_error(post_raw(api.enqueue, "/tasks", body.encode()), 413, "payload_too_large")


# --------------------------------------------------------------------------- routes and methods


@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "TRACE", "GET"])
@pytest.mark.parametrize("path", ["/tasks", "/enqueue"])
def test_other_methods_on_enqueue_routes_are_405(api: Api, method: str, path: str) -> None:
    response = api.enqueue.open(path, method=method)
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in [m.strip() for m in response.headers["allow"].split(",")]


def test_other_methods_on_batch_are_405(api: Api) -> None:
    response = api.enqueue.put("/tasks/batch", json={"tasks": []})
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in [m.strip() for m in response.headers["allow"].split(",")]


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "TRACE"])
def test_other_methods_on_status_route_are_405(api: Api, queue: str, method: str) -> None:
    response = api.status.open(f"/tasks/{queue}~{uuid.uuid4().hex}", method=method)
    assert_error(response, 405, "method_not_allowed")
    assert "GET" in [m.strip() for m in response.headers["allow"].split(",")]


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_task_path_on_enqueue_function_is_404_or_405(api: Api, method: str) -> None:
    response = api.enqueue.open("/tasks/x", method=method)
    assert response.status_code in (404, 405), response.text
    assert_error(response, response.status_code)


# "/%00" is sent raw to gunicorn (tests/e2e/test_server_limits.py)
UNKNOWN_PATHS = ["/", "/nope", "/tasks/x/y", "/v1/tasks", "/healthz/x", "/enqueue/x",
                 "/tasks/x~" + "a" * 32 + "/events"]


@pytest.mark.parametrize("path", UNKNOWN_PATHS)
@pytest.mark.parametrize("function", ["enqueue", "status"])
def test_unknown_paths_are_404_json(api: Api, function: str, path: str) -> None:
    client = getattr(api, function)
    assert_error(client.get(path), 404, "not_found")
    assert_error(client.post(path, data=b"{}", headers=JSON), 404, "not_found")


@pytest.mark.parametrize("path", ["/robots.txt", "/favicon.ico"])
@pytest.mark.parametrize("function", ["enqueue", "status"])
def test_framework_reserved_paths_are_404_json(api: Api, function: str, path: str) -> None:
    assert_error(getattr(api, function).get(path), 404)


@pytest.mark.parametrize("function", ["enqueue", "status"])
def test_healthz_is_200(api: Api, function: str) -> None:
    response = getattr(api, function).get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}
