"""Creating tasks through the enqueue function's test client: POST /tasks (defaults, delay,
accepted bodies), idempotency, the blog's /enqueue route, POST /tasks/batch.

No worker runs here, so every task stays queued or scheduled. Each test uses its own queue;
only the blog's /enqueue route and the default queue land in queue "default".
Concurrency and what needs a real server (chunked bodies) are in tests/e2e/test_server_limits.py.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
import redis

from tests.http.conftest import STATUS_BASE, Api
from tests.http.helpers import JSON, KEYS, VIEW_KEYS, MiB, create, create_id, padded_body, padded_object, post_raw

# --------------------------------------------------------------------------- POST /tasks


def test_create_answers_202_with_id_status_url_and_location(api: Api, queue: str, r: redis.Redis) -> None:
    response = create(api.enqueue, queue, type="send.email:v2", payload={"to": "a@b.c", "n": [1, 2.5, None]},
                      max_attempts=3, timeout_s=1.5)
    assert response.status_code == 202, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json
    assert set(body) == {"id", "status", "status_url"}
    assert body["status"] == "queued"
    assert re.fullmatch(re.escape(queue) + r"~[0-9a-f]{32}", body["id"])
    assert body["status_url"] == f"{STATUS_BASE}/tasks/{body['id']}"
    assert response.headers["location"] == body["status_url"]
    assert r.xlen(KEYS.stream(queue)) == 1
    assert r.zcard(KEYS.delayed(queue)) == 0
    record = r.hgetall(KEYS.task(body["id"]))
    assert record["type"] == "send.email:v2" and record["queue"] == queue and record["status"] == "queued"
    assert json.loads(record["payload"]) == {"to": "a@b.c", "n": [1, 2.5, None]}
    assert record["max_attempts"] == "3" and float(record["timeout_s"]) == 1.5
    assert 0 < r.ttl(KEYS.task(body["id"]))


def test_create_applies_defaults(api: Api, queue: str, r: redis.Redis) -> None:
    task_id = create_id(api.enqueue, queue)
    record = r.hgetall(KEYS.task(task_id))
    assert json.loads(record["payload"]) == {}
    assert record["max_attempts"] == "5" and float(record["timeout_s"]) == 300.0 and record["attempts"] == "0"
    view = api.status.get(f"/tasks/{task_id}").json
    assert view["max_attempts"] == 5 and view["attempts"] == 0 and view["status"] == "queued"


def test_a_priority_task_goes_to_its_levels_stream(api: Api, queue: str, r: redis.Redis) -> None:
    nine, five = create_id(api.enqueue, queue, priority=9), create_id(api.enqueue, queue, priority=5)
    assert r.hget(KEYS.task(nine), "priority") == "9" and r.hget(KEYS.task(five), "priority") is None
    assert r.xlen(KEYS.level_stream(queue, 9)) == 1 and r.xlen(KEYS.stream(queue)) == 1
    assert r.smembers(KEYS.levels(queue)) == {"9"}
    results = api.enqueue.post("/tasks/batch", json={"tasks": [{"type": "t", "queue": queue, "priority": 0},
                                                              {"type": "t", "queue": queue, "priority": 10}]}).json
    assert "id" in results["results"][0] and results["results"][1]["error"]["code"] == "validation_error"
    assert r.xlen(KEYS.level_stream(queue, 0)) == 1


def test_default_queue_is_default(api: Api, r: redis.Redis) -> None:
    response = api.enqueue.post("/tasks", json={"type": "t"})
    assert response.status_code == 202, response.text
    task_id = response.json["id"]
    assert task_id.startswith("default~")
    assert r.hget(KEYS.task(task_id), "queue") == "default"


@pytest.mark.parametrize("delay, status", [(None, "queued"), (0, "queued"), (0.0, "queued"), (30, "scheduled"),
                                           (0.5, "scheduled")])
def test_delay_makes_a_task_scheduled(api: Api, queue: str, r: redis.Redis, delay: float | None,
                                      status: str) -> None:
    fields = {} if delay is None else {"delay_s": delay}
    response = create(api.enqueue, queue, **fields)
    assert response.status_code == 202, response.text
    assert response.json["status"] == status
    task_id = response.json["id"]
    view = api.status.get(f"/tasks/{task_id}")
    assert view.status_code == 200 and view.json["status"] == status
    if status == "scheduled":
        assert r.xlen(KEYS.stream(queue)) == 0 and r.zscore(KEYS.delayed(queue), task_id) is not None
    else:
        assert r.xlen(KEYS.stream(queue)) == 1 and r.zcard(KEYS.delayed(queue)) == 0


def test_a_long_delay_outlives_the_pending_ttl(api: Api, queue: str, r: redis.Redis) -> None:
    """A task delayed 30 days keeps its record past its due time (PENDING_TTL_S is 7 days)."""
    reply = api.enqueue.post("/tasks", json={"type": "echo", "queue": queue, "delay_s": 30 * 86400})
    assert reply.status_code == 202
    assert r.ttl(KEYS.task(reply.json["id"])) > 30 * 86400


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "application/json; charset=UTF8", "Application/JSON"])
def test_json_content_types_accepted(api: Api, queue: str, content_type: str) -> None:
    body = json.dumps({"type": "t", "queue": queue}).encode()
    response = post_raw(api.enqueue, "/tasks", body, {"Content-Type": content_type})
    assert response.status_code == 202, response.text


def test_body_just_under_the_limit_accepted(api: Api, queue: str) -> None:
    response = post_raw(api.enqueue, "/tasks", padded_body(queue, MiB - 1))
    assert response.status_code == 202, response.text


@pytest.mark.parametrize("path", ["/tasks", "/enqueue"])
def test_body_of_exactly_the_limit_accepted(api: Api, queue: str, r: redis.Redis, path: str) -> None:
    body = padded_body(queue, MiB) if path == "/tasks" else padded_object(MiB)
    assert len(body) == MiB
    response = post_raw(api.enqueue, path, body)
    stored = r.xlen(KEYS.stream(queue)) if path == "/tasks" else None
    assert response.status_code == 202, (response.status_code, response.text[:200], f"stream entries: {stored}")


def test_payload_nested_to_the_depth_limit_accepted(api: Api, queue: str) -> None:
    body = b'{"type": "t", "queue": "' + queue.encode() + b'", "payload": ' + b"[" * 63 + b"]" * 63 + b"}"
    response = post_raw(api.enqueue, "/tasks", body)  # 64 containers in all
    assert response.status_code == 202, response.text


def test_many_keys_within_the_limit_are_accepted(api: Api) -> None:
    payload = {f"k{i}": 0 for i in range(50_000)}
    reply = api.enqueue.post("/tasks", json={"type": "echo", "queue": "abuse", "payload": payload})
    assert reply.status_code == 202


def test_nul_escaped_is_data_raw_is_malformed(api: Api) -> None:
    ok = post_raw(api.enqueue, "/tasks", b'{"type":"echo","queue":"abuse","payload":"a\\u0000b"}')
    assert ok.status_code == 202
    task = api.status.get("/tasks/" + ok.json["id"]).json
    assert task["type"] == "echo"
    raw = post_raw(api.enqueue, "/tasks", b'{"type":"echo","payload":"a\x00b"}')
    assert raw.status_code == 400


@pytest.mark.parametrize("path", ["/tasks", "/enqueue"])
@pytest.mark.parametrize("number", [b"18446744073709551616", b"-9223372036854775809"])
def test_big_integer_payload_is_not_a_500(api: Api, queue: str, path: str, number: bytes) -> None:
    body = b'{"type": "t", "queue": "' + queue.encode() + b'", "payload": {"n": ' + number + b"}}"
    response = post_raw(api.enqueue, path, body)
    assert response.status_code != 500, response.text
    assert response.status_code in (202, 400, 422), response.text


# --------------------------------------------------------------------------- idempotency


def test_idempotency_key_replays_the_first_task(api: Api, queue: str, r: redis.Redis) -> None:
    key = f"order-{uuid.uuid4()}"
    first = create(api.enqueue, queue, headers={"Idempotency-Key": key}, payload={"n": 1})
    assert first.status_code == 202, first.text
    again = create(api.enqueue, queue, headers={"Idempotency-Key": key}, payload={"n": 1})
    other_body = create(api.enqueue, queue, headers={"Idempotency-Key": key}, payload={"n": 2}, delay_s=5)
    for replay in (again, other_body):
        assert replay.status_code == 200, replay.text
        assert replay.json == first.json
        assert replay.headers["location"] == first.headers["location"] == first.json["status_url"]
    assert r.xlen(KEYS.stream(queue)) == 1
    assert r.zcard(KEYS.delayed(queue)) == 0
    assert len(r.keys(f"tb:{{{queue}}}:task:*")) == 1
    fresh = create(api.enqueue, queue, headers={"Idempotency-Key": key + "-2"})
    assert fresh.status_code == 202 and fresh.json["id"] != first.json["id"]


@pytest.mark.parametrize("key", ["k", "k" * 255, "a b", "~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}"])
def test_valid_idempotency_keys(api: Api, queue: str, key: str) -> None:
    body = json.dumps({"type": "t", "queue": queue}).encode()
    for expected in (202, 200):
        response = post_raw(api.enqueue, "/tasks", body, {**JSON, "Idempotency-Key": key})
        assert response.status_code == expected, response.text


# --------------------------------------------------------------------------- the blog's POST /enqueue


@pytest.mark.parametrize("path", ["/enqueue", "/enqueue/"])
def test_legacy_enqueue_publishes_a_default_task(api: Api, r: redis.Redis, path: str) -> None:
    payload = {"hello": "world", "n": [1, 2], "nested": {"ok": True}, "marker": uuid.uuid4().hex}
    response = api.enqueue.post(path, json=payload)
    assert response.status_code == 202, response.text
    body = response.json
    assert {"message", "task_id", "id", "status_url"} <= set(body), body
    assert body["message"] == "Task published"
    assert body["task_id"] == body["id"]
    assert re.fullmatch(r"default~[0-9a-f]{32}", body["id"])
    assert body["status_url"] == f"{STATUS_BASE}/tasks/{body['id']}"
    assert response.headers["location"] == body["status_url"]
    view = api.status.get(api.path(body["status_url"]))
    assert view.status_code == 200, view.text
    shown = view.json
    assert set(shown) == VIEW_KEYS and "payload" not in shown
    assert shown["id"] == body["id"] and shown["status"] == "queued"
    assert shown["type"] == "default" and shown["queue"] == "default"
    assert json.loads(r.hget(KEYS.task(body["id"]), "payload")) == payload


def test_legacy_enqueue_accepts_an_empty_object(api: Api) -> None:
    response = api.enqueue.post("/enqueue/", json={})
    assert response.status_code == 202, response.text
    assert response.json["message"] == "Task published"


def test_legacy_enqueue_honours_idempotency_key(api: Api) -> None:
    headers = {"Idempotency-Key": f"legacy-{uuid.uuid4()}"}
    first = api.enqueue.post("/enqueue", json={"a": 1}, headers=headers)
    again = api.enqueue.post("/enqueue/", json={"a": 1}, headers=headers)
    assert (first.status_code, again.status_code) == (202, 200)
    assert first.json["task_id"] == again.json["task_id"]


# --------------------------------------------------------------------------- POST /tasks/batch


def test_batch_results_in_order_and_each_task_recorded_and_published(api: Api, queue: str,
                                                                     r: redis.Redis) -> None:
    items = [{"type": "echo", "queue": queue, "payload": {"n": n}} for n in range(50)]
    items[7] = {"type": "bad type!", "queue": queue}
    items[20] = {"type": "echo", "queue": queue, "surprise": 1}
    items[30] = {"type": "echo", "queue": queue, "delay_s": 60, "payload": {"n": 30}}
    reply = api.enqueue.post("/tasks/batch", json={"tasks": items})
    assert reply.status_code == 200, reply.text
    results = reply.json["results"]
    assert len(results) == 50
    assert results[7]["error"]["code"] == "validation_error"
    assert results[7]["error"]["message"].startswith("tasks[7].type")
    assert results[20]["error"]["message"] == "tasks[20].surprise: unknown field"
    assert results[30]["status"] == "scheduled"
    good = [res for i, res in enumerate(results) if i not in (7, 20)]
    assert all(res["status_url"].endswith(res["id"]) for res in good)
    for n, res in enumerate(results):
        if "id" in res:
            assert r.hget(KEYS.task(res["id"]), "payload") == f'{{"n":{n}}}'
    assert r.xlen(KEYS.stream(queue)) == 47  # 50 - 2 refused - 1 delayed
    assert r.zcard(KEYS.delayed(queue)) == 1


def test_batch_idempotency_key_per_item(api: Api, queue: str) -> None:
    item = {"type": "echo", "queue": queue, "idempotency_key": "order-42"}
    first = api.enqueue.post("/tasks/batch", json={"tasks": [item, item]}).json["results"]
    again = api.enqueue.post("/tasks/batch", json={"tasks": [item]}).json["results"]
    assert first[0]["id"] == first[1]["id"] == again[0]["id"]


def test_a_full_batch_is_split_into_script_calls_and_keeps_its_order(api: Api, queue: str, r: redis.Redis) -> None:
    """1,000 tasks over two queues go as one pipeline of 100-task script calls: every result
    in request order, a key replayed across two calls returns the first task."""
    from taskbus.enqueue import CALL_ITEMS

    tasks: list[dict[str, object]] = [{"type": "echo", "queue": f"{queue}-{i % 2}", "payload": {"n": i}}
                                      for i in range(1000)]
    tasks[3]["idempotency_key"] = tasks[3 + 2 * CALL_ITEMS + 2]["idempotency_key"] = "same"
    results = api.enqueue.post("/tasks/batch", json={"tasks": tasks}).json["results"]
    assert results[3 + 2 * CALL_ITEMS + 2]["id"] == results[3]["id"]
    assert results[3 + 2 * CALL_ITEMS + 2]["status"] == "queued"
    assert r.xlen(KEYS.stream(f"{queue}-0")) + r.xlen(KEYS.stream(f"{queue}-1")) == 999
    for n, res in enumerate(results):
        assert res["id"].startswith(f"{queue}-{n % 2}~")
        if n != 3 + 2 * CALL_ITEMS + 2:
            assert r.hget(KEYS.task(res["id"]), "payload") == f'{{"n":{n}}}'


def test_batch_items_of_several_queues(api: Api, queue: str) -> None:
    tasks = [{"type": "echo", "queue": f"{queue}-{i % 3}"} for i in range(9)]
    results = api.enqueue.post("/tasks/batch", json={"tasks": tasks}).json["results"]
    assert [res["id"].split("~")[0] for res in results] == [f"{queue}-{i % 3}" for i in range(9)]
