"""Webhooks and API keys through the functions' test clients, with WEBHOOK_* and API_KEYS in
the environment they were built from, the session's Valkey, and a real worker process for the
end-to-end delivery.

Two pairs: `hooks` (six webhook sources, no API keys) and `keyed` (API_KEYS set, one GitHub
source on its own queue, used by the end-to-end test). Concurrent deliveries, a source that
refuses to start and the server processes' logs are in tests/e2e/test_webhooks_server.py.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import time
import urllib.parse
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from taskbus.settings import Settings
from testkit.procs import Proc
from testkit.signing import (
    SLACK_DOC_BODY,
    hex_mac,
    sign_acme,
    sign_github,
    sign_shopify,
    sign_slack,
    sign_standard,
    sign_stripe,
)
from tests.http.conftest import STATUS_BASE, Api, LogLines
from tests.http.hooks import (
    ALL_SECRETS,
    DEDUPE_TTL_S,
    E2E_QUEUE,
    GH_NEW,
    GH_OLD,
    ID_RE,
    K1,
    K2,
    KEYED_GH_SECRET,
    MAX_BODY,
    QUEUES,
    SIGNATURE_HEADERS,
    SLACK_SECRET,
    SOURCES,
    delivery,
    hook_settings,
    keyed_env,
    parse_iso,
    signature_header,
    stream_len,
    task_keys,
    task_record,
    webhook_env,
)
from tests.rawhttp import assert_error


@pytest.fixture(scope="module")
def hooks(make_api: Callable[..., Api], base_settings: Settings, log_lines: LogLines,
          tmp_path_factory: pytest.TempPathFactory) -> Api:
    """Enqueue (with the six webhook sources) and status, no API keys."""
    settings = hook_settings(dataclasses.replace(base_settings, status_base_url=STATUS_BASE))
    return make_api(settings, **webhook_env(tmp_path_factory.mktemp("webhook-secrets")))


@pytest.fixture(scope="module")
def keyed(make_api: Callable[..., Api], base_settings: Settings, log_lines: LogLines) -> Api:
    """Enqueue and status with API_KEYS set; one GitHub source on the end-to-end queue."""
    return make_api(dataclasses.replace(base_settings, status_base_url=STATUS_BASE), status_env=keyed_env(),
                    **keyed_env())


def post_hook(client: FlaskClient, source: str, body: bytes, headers: dict[str, str],
              content_type: str = "application/json", **more_headers: str) -> TestResponse:
    return client.post(f"/hooks/{source}", data=body, headers={"Content-Type": content_type, **headers, **more_headers})


def assert_accepted(response: TestResponse, queue: str, status: int = 202) -> str:
    assert response.status_code == status, response.text
    body = response.json
    assert set(body) == {"id", "status", "status_url"}, body
    match = ID_RE.fullmatch(body["id"])
    assert match and match["queue"] == queue, body["id"]
    assert body["status"] == "queued"
    assert body["status_url"] == f"{STATUS_BASE}/tasks/{body['id']}"
    assert response.headers["location"] == body["status_url"]
    return str(body["id"])


# --------------------------------------------------------------------------- valid deliveries


@pytest.mark.parametrize("source", SOURCES)
def test_valid_delivery_is_202_and_redelivery_is_200_with_the_same_id(hooks: Api, r: redis.Redis,
                                                                       source: str) -> None:
    d = delivery(source)
    queue = QUEUES[source]
    before = stream_len(r, queue)
    first = post_hook(hooks.enqueue, source, d.body, d.headers, d.content_type)
    task_id = assert_accepted(first, queue)
    assert stream_len(r, queue) == before + 1

    record = task_record(r, task_id)
    assert record["type"] == d.task_type
    assert record["queue"] == queue
    assert record["status"] == "queued"
    payload = json.loads(record["payload"])
    assert set(payload) == {"body", "webhook"}
    assert payload["body"] == json.loads(d.body)
    meta = payload["webhook"]
    assert set(meta) == {"source", "event", "delivery_id", "received_at", "headers"}
    assert meta["source"] == source
    assert meta["event"] == d.event
    assert meta["delivery_id"] == d.delivery_id
    received = parse_iso(meta["received_at"])
    assert abs((dt.datetime.now(dt.timezone.utc) - received).total_seconds()) < 30
    kept = {name.lower(): value for name, value in meta["headers"].items()}
    assert not kept.keys() & SIGNATURE_HEADERS, f"signature header stored in the task: {meta['headers']}"
    for name in d.kept:  # the exclusion above is not vacuous: other headers are stored
        assert kept[name.lower()] == d.headers[name]
    for value in kept.values():
        assert value != d.headers[signature_header(d)]

    again = post_hook(hooks.enqueue, source, d.body, d.headers, d.content_type)
    assert assert_accepted(again, queue, status=200) == task_id
    assert stream_len(r, queue) == before + 1


def test_rotated_github_secret_is_accepted(hooks: Api, r: redis.Redis) -> None:
    d = delivery("github")
    before = stream_len(r, QUEUES["github"])
    headers = {**d.headers, **sign_github(GH_NEW, d.body, "push", d.delivery_id)}
    assert_accepted(post_hook(hooks.enqueue, "github", d.body, headers), QUEUES["github"])
    assert stream_len(r, QUEUES["github"]) == before + 1


def test_github_form_encoded_payload(hooks: Api, r: redis.Redis) -> None:
    obj = {"action": "opened", "number": 7, "pull_request": {"title": "a & b = c"}}
    body = urllib.parse.urlencode({"payload": json.dumps(obj)}).encode()
    uid = uuid.uuid4().hex
    response = post_hook(hooks.enqueue, "github", body, sign_github(GH_NEW, body, "pull_request", uid),
                         "application/x-www-form-urlencoded")
    task_id = assert_accepted(response, QUEUES["github"])
    record = task_record(r, task_id)
    assert record["type"] == "github.pull_request"
    assert json.loads(record["payload"])["body"] == obj


def test_slack_slash_command_form(hooks: Api, r: redis.Redis) -> None:
    now = int(time.time())
    response = post_hook(hooks.enqueue, "slack", SLACK_DOC_BODY, sign_slack(SLACK_SECRET, SLACK_DOC_BODY, now),
                         "application/x-www-form-urlencoded")
    task_id = assert_accepted(response, QUEUES["slack"])
    record = task_record(r, task_id)
    assert record["type"] == "slack.command"
    payload = json.loads(record["payload"])
    assert payload["body"]["command"] == "/webhook-collect"
    assert payload["webhook"]["delivery_id"] is None


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("how", ["tampered", "wrong_secret", "missing"])
def test_bad_signature_is_401_and_enqueues_nothing(hooks: Api, r: redis.Redis, source: str, how: str) -> None:
    d = delivery(source)
    queue = QUEUES[source]
    before, keys_before = stream_len(r, queue), task_keys(r, queue)
    body, headers = d.body, dict(d.headers)
    if how == "tampered":
        body = d.body.replace(b"{", b'{"injected":true,', 1)
    elif how == "wrong_secret":
        wrong = {"github": lambda: sign_github("not-the-secret", d.body, "push", d.delivery_id),
                 "stripe": lambda: sign_stripe("whsec_wrong", d.body, int(time.time())),
                 "standard": lambda: sign_standard("whsec_" + "d3Jvbmctc2VjcmV0LXdyb25nLXNlY3JldA==", d.body,
                                                   int(time.time()), str(d.delivery_id)),
                 "slack": lambda: sign_slack("wrong", d.body, int(time.time())),
                 "shopify": lambda: sign_shopify("wrong", d.body, "orders/create", d.delivery_id),
                 "acme": lambda: sign_acme("wrong", d.body, "widget.created", str(d.delivery_id))}[source]()
        headers.update(wrong)
    else:
        del headers[signature_header(d)]
    assert_error(post_hook(hooks.enqueue, source, body, headers), 401, "invalid_signature")
    assert stream_len(r, queue) == before
    assert task_keys(r, queue) == keys_before


@pytest.mark.parametrize("source", ["stripe", "slack", "standard"])
@pytest.mark.parametrize("offset_s", [-3600, 3600])
def test_stale_or_future_timestamp_is_401_invalid_timestamp(hooks: Api, r: redis.Redis, source: str,
                                                            offset_s: int) -> None:
    d = delivery(source, now=int(time.time()) + offset_s)
    before = stream_len(r, QUEUES[source])
    assert_error(post_hook(hooks.enqueue, source, d.body, d.headers), 401, "invalid_timestamp")
    assert stream_len(r, QUEUES[source]) == before


@pytest.mark.parametrize("source", ["stripe", "slack", "standard"])
def test_webhook_tolerance_setting_bounds_every_timestamped_scheme(hooks: Api, r: redis.Redis,
                                                                   source: str) -> None:
    """A delivery 200 s old: inside the libraries' usual 5 minutes, outside WEBHOOK_TOLERANCE_S=120."""
    d = delivery(source, now=int(time.time()) - 200)
    before = stream_len(r, QUEUES[source])
    assert_error(post_hook(hooks.enqueue, source, d.body, d.headers), 401, "invalid_timestamp")
    assert stream_len(r, QUEUES[source]) == before


def test_dedupe_window_is_webhook_dedupe_ttl_s(hooks: Api, r: redis.Redis) -> None:
    queue = QUEUES["acme"]
    pattern = f"tb:{{{queue}}}:idem:*"
    keys_before = set(r.keys(pattern))
    d = delivery("acme")
    assert_accepted(post_hook(hooks.enqueue, "acme", d.body, d.headers), queue)
    (new_key,) = set(r.keys(pattern)) - keys_before
    assert DEDUPE_TTL_S - 60 < r.ttl(new_key) <= DEDUPE_TTL_S


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_on_hooks_are_405(hooks: Api, method: str) -> None:
    response = hooks.enqueue.open("/hooks/github", method=method)
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


def test_unknown_source_is_404(hooks: Api) -> None:
    d = delivery("github")
    error = assert_error(post_hook(hooks.enqueue, "gitlab", d.body, d.headers), 404, "not_found")
    assert "gitlab" in error["message"]
    assert_error(post_hook(hooks.enqueue, "GitHub", d.body, d.headers), 404, "not_found")


def test_body_over_the_limit_is_413(hooks: Api, r: redis.Redis) -> None:
    body = json.dumps({"ref": "refs/heads/main", "pad": "x" * MAX_BODY}).encode()
    assert len(body) > MAX_BODY
    before = stream_len(r, QUEUES["github"])
    response = post_hook(hooks.enqueue, "github", body, sign_github(GH_OLD, body, "push", uuid.uuid4().hex))
    assert_error(response, 413, "payload_too_large")
    assert stream_len(r, QUEUES["github"]) == before


def test_wrong_content_type_after_a_valid_signature_is_415(hooks: Api, r: redis.Redis) -> None:
    d = delivery("stripe")
    before = stream_len(r, QUEUES["stripe"])
    assert_error(post_hook(hooks.enqueue, "stripe", d.body, d.headers, "text/plain"), 415, "unsupported_media_type")
    assert stream_len(r, QUEUES["stripe"]) == before


def test_github_ping_is_200_and_makes_no_task(hooks: Api, r: redis.Redis) -> None:
    body = json.dumps({"zen": "Design for failure.", "hook_id": 12345, "hook": {"type": "Repository"}}).encode()
    queue = QUEUES["github"]
    before, keys_before = stream_len(r, queue), task_keys(r, queue)
    response = post_hook(hooks.enqueue, "github", body, sign_github(GH_OLD, body, "ping", uuid.uuid4().hex))
    assert response.status_code == 200, response.text
    assert response.json == {"ok": True, "event": "ping"}
    assert stream_len(r, queue) == before
    assert task_keys(r, queue) == keys_before
    unsigned = post_hook(hooks.enqueue, "github", body, sign_github("nope", body, "ping", uuid.uuid4().hex))
    assert_error(unsigned, 401, "invalid_signature")


def test_slack_url_verification_answers_the_challenge_and_makes_no_task(hooks: Api, r: redis.Redis) -> None:
    challenge = f"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P{uuid.uuid4().hex}"
    body = json.dumps({"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": challenge,
                       "type": "url_verification"}).encode()
    queue = QUEUES["slack"]
    before, keys_before = stream_len(r, queue), task_keys(r, queue)
    response = post_hook(hooks.enqueue, "slack", body, sign_slack(SLACK_SECRET, body, int(time.time())))
    assert response.status_code == 200, response.text
    assert response.json == {"challenge": challenge}
    assert stream_len(r, queue) == before
    assert task_keys(r, queue) == keys_before


# --------------------------------------------------------------------------- API keys


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_unauthorized(response: TestResponse) -> None:
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": "Bearer"}, {"Authorization": K1},
                                     {"Authorization": f"Basic {K1}"}, bearer(K1 + "x"), bearer(K1[:-1])],
                         ids=["none", "wrong", "empty", "no-scheme", "basic", "longer", "shorter"])
def test_create_without_a_valid_key_is_401(keyed: Api, r: redis.Redis, queue: str,
                                           headers: dict[str, str]) -> None:
    response = keyed.enqueue.post("/tasks", json={"type": "t", "queue": queue}, headers=headers)
    assert_unauthorized(response)
    assert stream_len(r, queue) == 0
    assert_unauthorized(keyed.enqueue.post("/enqueue", json={"a": 1}, headers=headers))


@pytest.mark.parametrize("key", ["k1", "k2"])
def test_create_with_either_key_is_202_and_status_needs_a_key(keyed: Api, r: redis.Redis, queue: str,
                                                             key: str) -> None:
    token = {"k1": K1, "k2": K2}[key]
    response = keyed.enqueue.post("/tasks", json={"type": "t", "queue": queue}, headers=bearer(token))
    assert response.status_code == 202, response.text
    task_id = response.json["id"]
    assert stream_len(r, queue) == 1
    assert_unauthorized(keyed.status.get(f"/tasks/{task_id}"))
    assert_unauthorized(keyed.status.get(f"/tasks/{task_id}", headers=bearer("wrong")))
    assert_unauthorized(keyed.status.get(f"/task/{task_id}"))
    other = K2 if token == K1 else K1
    shown = keyed.status.get(f"/tasks/{task_id}", headers=bearer(other))
    assert shown.status_code == 200, shown.text
    assert shown.json["id"] == task_id and shown.json["status"] == "queued"
    lower = keyed.status.get(f"/tasks/{task_id}", headers={"Authorization": f"bearer {token}"})
    assert lower.status_code == 200, lower.text


def test_legacy_enqueue_with_a_key_is_202(keyed: Api) -> None:
    response = keyed.enqueue.post("/enqueue", json={"a": 1}, headers=bearer(K2))
    assert response.status_code == 202, response.text
    assert response.json["status"] == "queued"


@pytest.mark.parametrize("function", ["enqueue", "status"])
def test_healthz_needs_no_key(keyed: Api, function: str) -> None:
    response = getattr(keyed, function).get("/healthz")
    assert response.status_code == 200 and response.json == {"status": "ok"}


def test_hooks_need_a_signature_not_a_key(keyed: Api, r: redis.Redis) -> None:
    body = json.dumps({"ref": "refs/heads/dev", "commits": []}).encode()
    before = stream_len(r, E2E_QUEUE)
    signed = post_hook(keyed.enqueue, "github", body, sign_github(KEYED_GH_SECRET, body, "push", uuid.uuid4().hex))
    assert_accepted(signed, E2E_QUEUE)
    wrong = post_hook(keyed.enqueue, "github", body, sign_github(GH_OLD, body, "push", uuid.uuid4().hex),
                      **bearer(K1))
    assert_error(wrong, 401, "invalid_signature")  # a key does not stand in for a signature
    assert stream_len(r, E2E_QUEUE) == before + 1  # no worker runs here (the end-to-end test's is gone)


# --------------------------------------------------------------------------- logs


def test_secrets_never_reach_the_logs(hooks: Api, keyed: Api, log_lines: LogLines) -> None:
    """Runs after the tests above (file order): the lines hold all their traffic, the functions'
    start-up included, at DEBUG. (The server processes' own output: tests/e2e.)"""
    # more traffic, failures included, right before reading
    d = delivery("acme")
    post_hook(hooks.enqueue, "acme", d.body, {**d.headers, "X-Acme-Signature": "sha256=" + hex_mac("x", d.body)})
    post_hook(hooks.enqueue, "acme", d.body, d.headers)
    keyed.enqueue.post("/tasks", json={"type": "t"}, headers={"Authorization": "Bearer wrong"})
    text = log_lines.text
    assert "webhook sources enabled" in text, text[-2000:]
    for name in SOURCES:
        assert name in text
    for secret in (*ALL_SECRETS, K1, K2):
        assert secret not in text, "a secret appears in the log"


# --------------------------------------------------------------------------- end to end


def long_poll(api: Api, task_id: str, key: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        wait = min(10.0, max(1.0, deadline - time.monotonic()))
        response = api.status.get(f"/tasks/{task_id}", query_string={"wait": wait}, headers=bearer(key))
        assert response.status_code == 200, response.text
        task = dict(response.json)
        if task["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return task


def test_signed_github_push_runs_on_a_worker(keyed: Api, workers: Callable[..., Proc]) -> None:
    body = json.dumps({"ref": "refs/heads/main", "before": "000", "after": "abc",
                       "commits": [{"id": "abc", "message": "fix"}], "head_commit": {"id": "abc"},
                       "repository": {"full_name": "o/r"}, "pusher": {"name": "octocat"}}).encode()
    response = post_hook(keyed.enqueue, "github", body, sign_github(KEYED_GH_SECRET, body, "push", uuid.uuid4().hex))
    task_id = assert_accepted(response, E2E_QUEUE)
    workers(queues=(E2E_QUEUE,), handlers="tests.handlers")
    task = long_poll(keyed, task_id, K1)
    assert task["type"] == "github.push"
    assert task["queue"] == E2E_QUEUE
    assert task["attempts"] >= 1, task
    assert task["status"] == "succeeded", f"github.push did not succeed: {task['error']}"
    assert "refs/heads/main" in json.dumps(task["result"]), task["result"]
