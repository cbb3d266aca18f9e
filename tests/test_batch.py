"""POST /tasks/batch: per-item results in request order; one bad item fails alone."""

from __future__ import annotations

import httpx
import redis

from taskbus.keys import Keys


def batch(http: httpx.Client, functions: dict[str, str], tasks: object) -> httpx.Response:
    return http.post(functions["enqueue"] + "/tasks/batch", json={"tasks": tasks})


def test_results_in_order_and_each_task_recorded_and_published(http, functions, queue, r: redis.Redis):
    items = [{"type": "echo", "queue": queue, "payload": {"n": n}} for n in range(50)]
    items[7] = {"type": "bad type!", "queue": queue}
    items[20] = {"type": "echo", "queue": queue, "surprise": 1}
    items[30] = {"type": "echo", "queue": queue, "delay_s": 60, "payload": {"n": 30}}
    reply = batch(http, functions, items)
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert len(results) == 50
    assert results[7]["error"]["code"] == "validation_error" and results[7]["error"]["message"].startswith("tasks[7].type")
    assert results[20]["error"]["message"] == "tasks[20].surprise: unknown field"
    assert results[30]["status"] == "scheduled"
    good = [res for i, res in enumerate(results) if i not in (7, 20)]
    assert all(res["status_url"].endswith(res["id"]) for res in good)
    keys = Keys("tb")
    for n, res in enumerate(results):
        if "id" in res:
            assert r.hget(keys.task(res["id"]), "payload") == f'{{"n":{n}}}'
    assert r.xlen(keys.stream(queue)) == 47  # 50 - 2 refused - 1 delayed
    assert r.zcard(keys.delayed(queue)) == 1


def test_idempotency_key_per_item(http, functions, queue):
    item = {"type": "echo", "queue": queue, "idempotency_key": "order-42"}
    first = batch(http, functions, [item, item]).json()["results"]
    again = batch(http, functions, [item]).json()["results"]
    assert first[0]["id"] == first[1]["id"] == again[0]["id"]


def test_items_of_several_queues(http, functions, queue):
    results = batch(http, functions, [{"type": "echo", "queue": f"{queue}-{i % 3}"} for i in range(9)]).json()["results"]
    assert [res["id"].split("~")[0] for res in results] == [f"{queue}-{i % 3}" for i in range(9)]


def test_batch_shape_errors(http, functions, queue):
    for body in ({"tasks": []}, {"tasks": {}}, {"task": []}, [], {"tasks": [{}] * 1001}):
        reply = http.post(functions["enqueue"] + "/tasks/batch", json=body)
        assert reply.status_code == 422, (body if not isinstance(body, dict) else list(body), reply.text)
        assert reply.json()["error"]["code"] == "validation_error"
    assert http.put(functions["enqueue"] + "/tasks/batch", json={"tasks": []}).status_code == 405


def test_a_long_delay_outlives_the_pending_ttl(http, functions, queue, r: redis.Redis):
    """A task delayed 30 days keeps its record past its due time (PENDING_TTL_S is 7 days)."""
    reply = http.post(functions["enqueue"] + "/tasks", json={"type": "echo", "queue": queue, "delay_s": 30 * 86400})
    assert reply.status_code == 202
    assert r.ttl(Keys("tb").task(reply.json()["id"])) > 30 * 86400
