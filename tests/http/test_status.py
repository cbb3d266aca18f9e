"""Reading tasks through the status function's test client: the view, the long-poll's wait
semantics (no worker runs, so a wait runs to its timeout), unknown, expired and malformed ids.

Targets that must reach the function byte for byte (dot segments, %00, %2F, invalid UTF-8)
go over a raw socket to gunicorn: tests/e2e/test_server_limits.py.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid

import pytest
import redis

from testkit.procs import wait_until
from tests.http.conftest import Api
from tests.http.helpers import ISO_Z, KEYS, VIEW_KEYS, create_id, queue_keys
from tests.rawhttp import assert_error

# "Answers at once" is asserted against a wait the request asked for and must not do: with
# ?wait=5 (or an out-of-range wait), any answer within 2 s shows it did not wait.
AT_ONCE_S = 2.0


@pytest.mark.parametrize("route", ["/tasks/", "/task/"])
def test_status_view_shape_and_reads_change_nothing(api: Api, queue: str, r: redis.Redis, route: str) -> None:
    before_create = dt.datetime.now(dt.timezone.utc)
    task_id = create_id(api.enqueue, queue, type="report.build", max_attempts=7, payload={"secret": "x"})
    record_before = r.hgetall(KEYS.task(task_id))
    keys_before = queue_keys(r, queue)
    first = api.status.get(route + task_id)
    second = api.status.get(route + task_id)
    assert first.status_code == 200 and second.status_code == 200, (first.text, second.text)
    assert first.headers["content-type"].startswith("application/json")
    view = first.json
    assert set(view) == VIEW_KEYS
    assert view == second.json
    assert view["id"] == task_id and view["type"] == "report.build" and view["queue"] == queue
    assert view["status"] == "queued" and view["attempts"] == 0 and view["max_attempts"] == 7
    assert view["started_at"] is None and view["finished_at"] is None
    assert view["result"] is None and view["error"] is None
    assert ISO_Z.fullmatch(view["created_at"]), view["created_at"]
    created = dt.datetime.fromisoformat(view["created_at"].replace("Z", "+00:00"))
    assert created.tzinfo is not None and created.utcoffset() == dt.timedelta(0)
    assert abs((created - before_create).total_seconds()) < 30
    assert r.hgetall(KEYS.task(task_id)) == record_before
    assert queue_keys(r, queue) == keys_before


def test_wait_answers_at_the_timeout_with_the_current_state(api: Api, queue: str, r: redis.Redis) -> None:
    task_id = create_id(api.enqueue, queue)
    record_before, keys_before = r.hgetall(KEYS.task(task_id)), queue_keys(r, queue)
    start = time.monotonic()
    response = api.status.get(f"/tasks/{task_id}", query_string={"wait": "1"})
    elapsed = time.monotonic() - start
    assert response.status_code == 200, response.text
    assert response.json["status"] == "queued" and set(response.json) == VIEW_KEYS
    assert 0.95 <= elapsed < 3, elapsed
    assert r.hgetall(KEYS.task(task_id)) == record_before
    assert queue_keys(r, queue) == keys_before


def test_wait_on_a_scheduled_task(api: Api, queue: str) -> None:
    task_id = create_id(api.enqueue, queue, delay_s=60)
    start = time.monotonic()
    response = api.status.get(f"/task/{task_id}?wait=0.5")
    assert response.status_code == 200 and response.json["status"] == "scheduled"
    assert 0.45 <= time.monotonic() - start < 3


@pytest.mark.parametrize("wait", ["0", "", "0.0"])
def test_wait_zero_answers_at_once(api: Api, queue: str, wait: str) -> None:
    task_id = create_id(api.enqueue, queue)
    start = time.monotonic()
    response = api.status.get(f"/tasks/{task_id}?wait={wait}")
    assert response.status_code == 200 and response.json["id"] == task_id
    assert time.monotonic() - start < AT_ONCE_S


@pytest.mark.parametrize("wait", ["61", "60.001", "-1", "-0.5", "abc", "nan", "NaN", "inf", "-inf", "1e999",
                                  "0x10", "1s", "%00"])
def test_wait_out_of_range_is_422(api: Api, queue: str, wait: str) -> None:
    task_id = create_id(api.enqueue, queue)
    start = time.monotonic()
    response = api.status.get(f"/tasks/{task_id}?wait={wait}")  # the query string goes as written
    error = assert_error(response, 422, "validation_error")
    assert "wait" in error["message"]
    assert time.monotonic() - start < AT_ONCE_S


def test_unknown_id_is_404_and_creates_nothing(api: Api, queue: str, r: redis.Redis) -> None:
    before = set(r.keys("*"))
    task_id = f"{queue}~{uuid.uuid4().hex}"
    for url in (f"/tasks/{task_id}", f"/task/{task_id}", f"/tasks/{task_id}?wait=5"):
        start = time.monotonic()
        error = assert_error(api.status.get(url), 404, "not_found")
        assert time.monotonic() - start < AT_ONCE_S, url  # an unknown id does not wait
        assert task_id in error["message"]
    assert set(r.keys("*")) - before == set()
    assert r.keys(f"*{task_id.split('~')[1]}*") == []


def test_expired_id_is_404(api: Api, queue: str, r: redis.Redis) -> None:
    task_id = create_id(api.enqueue, queue)
    assert api.status.get(f"/tasks/{task_id}").status_code == 200
    r.pexpire(KEYS.task(task_id), 1)
    wait_until(lambda: not r.exists(KEYS.task(task_id)), timeout=5, message="the task hash to expire")
    assert_error(api.status.get(f"/tasks/{task_id}"), 404, "not_found")
    assert_error(api.status.get(f"/tasks/{task_id}?wait=1"), 404, "not_found")
    assert not r.exists(KEYS.task(task_id))


# Ids the function must refuse without touching a key. Those whose bytes a client library or
# the test client would rewrite are sent raw to gunicorn (tests/e2e/test_server_limits.py).
MALFORMED_IDS = {
    "nope": "/tasks/nope",
    "1 KB": "/tasks/" + "a" * 1024,
    "default~XYZ": "/tasks/default~XYZ",
    "uppercase hex": "/tasks/default~" + "A" * 32,
    "short hex": "/tasks/default~" + "a" * 31,
    "slash": "/tasks/default~" + "a" * 32 + "/x",
    "queue with slash": "/tasks/a/b~" + "a" * 32,
    "glob star": "/tasks/*",
    "glob in queue": "/tasks/*~" + "a" * 32,
    "legacy route nope": "/task/nope",
    "empty id": "/tasks/",
    "with wait": "/tasks/nope?wait=5",
}


@pytest.mark.parametrize("target", MALFORMED_IDS.values(), ids=MALFORMED_IDS.keys())
def test_malformed_id_is_404_and_touches_no_key(api: Api, r: redis.Redis, target: str) -> None:
    before = set(r.keys("*"))
    start = time.monotonic()
    assert_error(api.status.get(target), 404, "not_found")
    assert time.monotonic() - start < AT_ONCE_S  # never waits, even with ?wait=5
    assert set(r.keys("*")) - before == set()
    assert r.keys("*nope*") == []


def test_a_repeated_wait_parameter_counts_its_first_value(api: Api, queue: str) -> None:
    """Both serving paths read the first of a repeated query parameter."""
    task_id = create_id(api.enqueue, queue)
    assert api.status.get(f"/tasks/{task_id}?wait=0&wait=9999").status_code == 200
    assert_error(api.status.get(f"/tasks/{task_id}?wait=9999&wait=0"), 422, "validation_error")
