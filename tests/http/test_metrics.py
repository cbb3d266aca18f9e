"""`GET /metrics` of the functions, in process on both serving paths: requests counted under
their route template (never the raw path), tasks enqueued, webhook deliveries by result, and
the access rule (loopback open; anyone else needs a key when the function has keys), tested
through the service with requests whose client address is given."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from taskbus.http import Service
from taskbus.http.core import Request
from taskbus.settings import Settings
from testkit.metrics import Samples, parse, total
from testkit.signing import sign_github, sign_stripe
from tests.http.conftest import STATUS_BASE, Api, build_app, close

RUN = uuid.uuid4().hex[:8]
KEY = f"metrics-{RUN}-key"
GH_SECRET, STRIPE_SECRET = f"gh-{RUN}-m1", f"whsec_stripe{RUN}M2"
BEARER = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def api(make_api: Callable[..., Api], base_settings: Settings) -> Api:
    queue = f"m-{RUN}"
    settings = dataclasses.replace(base_settings, status_base_url=STATUS_BASE, queues=(queue,))
    return make_api(settings, status_env={"API_KEYS": KEY}, API_KEYS=KEY, WEBHOOK_SOURCES="ghm,stm",
                    WEBHOOK_GHM_SCHEME="github", WEBHOOK_GHM_SECRET=GH_SECRET, WEBHOOK_GHM_QUEUE=queue,
                    WEBHOOK_STM_SCHEME="stripe", WEBHOOK_STM_SECRET=STRIPE_SECRET, WEBHOOK_STM_QUEUE=queue)


def scrape(client: Any) -> Samples:
    reply = client.get("/metrics", headers=BEARER)
    assert reply.status_code == 200, reply.data
    assert reply.headers["Content-Type"].startswith("text/plain")
    return parse(reply.data.decode())


def test_requests_are_counted_by_route_template(api: Api) -> None:
    queue = api.settings.queues[0]
    created = api.enqueue.post("/tasks", json={"type": "echo", "payload": {"secret": "p-" + RUN}, "queue": queue},
                               headers=BEARER)
    assert created.status_code == 202
    assert api.enqueue.post("/tasks", json={"type": "echo"}).status_code == 401  # no key
    assert api.enqueue.get("/no/such/route").status_code == 404
    task_id = created.json["id"]
    assert api.status.get(f"/tasks/{task_id}", headers=BEARER).status_code == 200

    samples = scrape(api.enqueue)
    assert total(samples, "taskbus_http_requests_total", function="enqueue", route="/tasks", code="202") == 1
    assert total(samples, "taskbus_http_requests_total", function="enqueue", route="/tasks", code="401") == 1
    assert total(samples, "taskbus_http_requests_total", function="enqueue", route="unmatched", code="404") == 1
    assert total(samples, "taskbus_http_request_duration_seconds_count", function="enqueue", route="/tasks") == 2
    assert total(samples, "taskbus_tasks_enqueued_total", queue=queue) == 1
    page = api.enqueue.get("/metrics", headers=BEARER).data.decode()
    assert task_id not in page and "p-" + RUN not in page and KEY not in page  # no id, payload or key

    status = scrape(api.status)
    assert total(status, "taskbus_http_requests_total", function="status", route="/tasks/<task_id>",
                 code="200") == 1
    assert all(task_id not in labels.values() for _, labels, _ in status)


def test_webhook_deliveries_by_result(api: Api) -> None:
    body = b'{"action": "opened"}'
    delivery = f"d-{uuid.uuid4().hex}"
    headers = {"Content-Type": "application/json"}
    signed = {**headers, **sign_github(GH_SECRET, body, delivery=delivery)}
    assert api.enqueue.post("/hooks/ghm", data=body, headers=signed).status_code == 202
    assert api.enqueue.post("/hooks/ghm", data=body, headers=signed).status_code == 200  # the same delivery
    forged = {**headers, **sign_github("not-the-secret", body, delivery=delivery)}
    assert api.enqueue.post("/hooks/ghm", data=body, headers=forged).status_code == 401
    old = {**headers, **sign_stripe(STRIPE_SECRET, b'{"id": "evt_1", "type": "x"}', int(time.time()) - 3600)}
    assert api.enqueue.post("/hooks/stm", data=b'{"id": "evt_1", "type": "x"}', headers=old).status_code == 401

    samples = scrape(api.enqueue)
    for result, count in (("accepted", 1), ("duplicate", 1), ("invalid_signature", 1)):
        assert total(samples, "taskbus_webhook_deliveries_total", source="ghm", result=result) == count, result
    assert total(samples, "taskbus_webhook_deliveries_total", source="stm", result="invalid_timestamp") == 1


@pytest.fixture(scope="module")
def services(base_settings: Settings) -> Iterator[dict[str, Service]]:
    """The enqueue function's service with API_KEYS and without, and the console's (ADMIN_KEYS)."""
    settings = dataclasses.replace(base_settings, status_base_url=STATUS_BASE)
    built = {"keyed": build_app("enqueue", settings, API_KEYS=KEY), "open": build_app("enqueue", settings),
             "console": build_app("console", dataclasses.replace(settings, admin_keys=(("ops", KEY),)),
                                  ADMIN_KEYS=f"ops:{KEY}")}
    yield {name: one.module.service for name, one in built.items()}
    for one in built.values():
        close(one)


@pytest.mark.parametrize("service", ["keyed", "console"])
@pytest.mark.parametrize("remote, key, expected", [
    ("127.0.0.1", None, 200), ("127.3.2.1", None, 200), ("::1", None, 200), ("::ffff:127.0.0.1", None, 200),
    ("203.0.113.9", None, 401), ("203.0.113.9", "wrong", 401), ("203.0.113.9", "right", 200),
    ("", None, 401), ("testclient", None, 401),
])
def test_metrics_are_open_on_loopback_and_keyed_otherwise(services: dict[str, Service], service: str, remote: str,
                                                           key: str | None, expected: int) -> None:
    headers = {"Authorization": f"Bearer {KEY if key == 'right' else key}"} if key else {}
    response = services[service].handle(Request("GET", "/metrics", {}, headers, remote=remote), lambda _: b"")
    assert response.status == expected
    if expected == 200:
        assert b"taskbus_http_requests_total" in response.body


def test_without_keys_metrics_are_open_to_anyone(services: dict[str, Service]) -> None:
    response = services["open"].handle(Request("GET", "/metrics", {}, {}, remote="203.0.113.9"), lambda _: b"")
    assert response.status == 200
