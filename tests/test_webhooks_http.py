"""Webhooks and API keys over real HTTP: gunicorn functions started by this module with
WEBHOOK_* and API_KEYS in their environment, the session's embedded Valkey, and a real
worker process for the end-to-end delivery.

Two function pairs: `hooks` (six webhook sources, no API keys) and `keyed` (API_KEYS set,
one GitHub source on its own queue, used by the end-to-end test). Every source writes to a
queue unique to this module run, so stream lengths are exact oracles.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from local.embedded import free_port
from taskbus.settings import Settings
from tests.support import Proc, spawn, start_function, stop, wait_until
from tests.test_webhooks import (
    SLACK_DOC_BODY,
    STANDARD_SECRET,
    hex_mac,
    sign_acme,
    sign_github,
    sign_shopify,
    sign_slack,
    sign_standard,
    sign_stripe,
)

RUN = uuid.uuid4().hex[:8]
SOURCES = ("github", "stripe", "standard", "slack", "shopify", "acme")
QUEUES = {name: f"wh-{RUN}-{name}" for name in SOURCES}
E2E_QUEUE = f"wh-{RUN}-e2e"

# Distinctive secrets, so that finding one in a log cannot be a coincidence.
GH_OLD, GH_NEW = f"gh-old-{RUN}-Zq8w", f"gh-new-{RUN}-Xv3k"
STRIPE_SECRET = f"whsec_stripe{RUN}Pq7"
SLACK_SECRET = f"slack-{RUN}-Mn4b"
SHOPIFY_SECRET = f"shpss_{RUN}Hj2r"
ACME_SECRET = f"acme-{RUN}-Tt9y"
KEYED_GH_SECRET = f"gh-keyed-{RUN}-Lc5e"
ORPHAN_GH_SECRET = f"gh-orphan-{RUN}-Wd1a"
ALL_SECRETS = (GH_OLD, GH_NEW, STRIPE_SECRET, STANDARD_SECRET, STANDARD_SECRET.removeprefix("whsec_"), SLACK_SECRET,
               SHOPIFY_SECRET, ACME_SECRET, KEYED_GH_SECRET)
K1, K2 = f"k1-{RUN}-apikey", f"k2-{RUN}-apikey"

MAX_BODY = 16 * 1024
TOLERANCE_S = 120  # below standardwebhooks' fixed 5 minutes, so the setting is observable
DEDUPE_TTL_S = 7200
SIGNATURE_HEADERS = {"x-hub-signature-256", "x-hub-signature", "stripe-signature", "webhook-signature",
                     "x-slack-signature", "x-shopify-hmac-sha256", "x-acme-signature"}
ID_RE = re.compile(r"(?P<queue>[A-Za-z0-9_.:-]+)~(?P<hex>[0-9a-f]{32})")


# --------------------------------------------------------------------------- processes


@dataclasses.dataclass
class Pair:
    enqueue: str
    status: str
    procs: dict[str, Proc]


def fresh_settings(base_settings: Settings, **changes: Any) -> Settings:
    status_port = free_port()
    return dataclasses.replace(base_settings, enqueue_port=free_port(), status_port=status_port,
                               status_base_url=f"http://127.0.0.1:{status_port}", **changes)



def webhook_env(secret_dir: Path) -> dict[str, str]:
    slack_file = secret_dir / "slack.secret"
    slack_file.write_text(SLACK_SECRET + "\n", "utf-8")
    env = {
        "WEBHOOK_SOURCES": ",".join(SOURCES),
        "WEBHOOK_GITHUB_SECRET": f"{GH_OLD},{GH_NEW}",
        "WEBHOOK_STRIPE_SECRET": STRIPE_SECRET,
        "WEBHOOK_STANDARD_SECRET": STANDARD_SECRET,
        "WEBHOOK_SLACK_SECRET_FILE": str(slack_file),
        "WEBHOOK_SHOPIFY_SECRET": SHOPIFY_SECRET,
        "WEBHOOK_ACME_SCHEME": "hmac",
        "WEBHOOK_ACME_SECRET": ACME_SECRET,
        "WEBHOOK_ACME_HEADER": "X-Acme-Signature",
        "WEBHOOK_ACME_PREFIX": "sha256=",
        "WEBHOOK_ACME_ENCODING": "hex",
        "WEBHOOK_ACME_ALGORITHM": "sha256",
        "WEBHOOK_ACME_EVENT_HEADER": "X-Acme-Event",
        "WEBHOOK_ACME_ID_HEADER": "X-Acme-Delivery",
        "WEBHOOK_TOLERANCE_S": str(TOLERANCE_S),
        "WEBHOOK_DEDUPE_TTL_S": str(DEDUPE_TTL_S),
    }
    env.update({f"WEBHOOK_{name.upper()}_QUEUE": queue for name, queue in QUEUES.items()})
    return env


@pytest.fixture(scope="module")
def hooks(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Enqueue (with the six webhook sources) and status, on fresh ports, no API keys."""
    log_dir = tmp_path_factory.mktemp("webhook-functions")
    settings = fresh_settings(base_settings, max_body_bytes=MAX_BODY)
    procs: dict[str, Proc] = {}
    try:
        procs["enqueue"], enqueue_url = start_function("enqueue", settings, log_dir, **webhook_env(log_dir))
        procs["status"], status_url = start_function("status", settings, log_dir)
        yield Pair(enqueue_url, status_url, procs)
    finally:
        for proc in procs.values():
            stop(proc)


@pytest.fixture(scope="module")
def keyed(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """Enqueue and status with API_KEYS set; one GitHub source on the end-to-end queue."""
    log_dir = tmp_path_factory.mktemp("keyed-functions")
    settings = fresh_settings(base_settings)
    env = {"API_KEYS": f"{K1},{K2}", "WEBHOOK_SOURCES": "github", "WEBHOOK_GITHUB_SECRET": KEYED_GH_SECRET,
           "WEBHOOK_GITHUB_QUEUE": E2E_QUEUE}
    procs: dict[str, Proc] = {}
    try:
        procs["enqueue"], enqueue_url = start_function("enqueue", settings, log_dir, **env)
        procs["status"], status_url = start_function("status", settings, log_dir, **env)
        yield Pair(enqueue_url, status_url, procs)
    finally:
        for proc in procs.values():
            stop(proc)


# --------------------------------------------------------------------------- helpers


def post_hook(base: str, source: str, body: bytes, headers: dict[str, str],
              content_type: str = "application/json", **more_headers: str) -> httpx.Response:
    return httpx.post(f"{base}/hooks/{source}", content=body,
                      headers={"Content-Type": content_type, **headers, **more_headers}, timeout=10)


def stream_len(r: redis.Redis, queue: str) -> int:
    return int(r.xlen(f"tb:{{{queue}}}:stream"))


def task_keys(r: redis.Redis, queue: str) -> set[str]:
    return set(r.keys(f"tb:{{{queue}}}:task:*"))


def task_record(r: redis.Redis, task_id: str) -> dict[str, str]:
    match = ID_RE.fullmatch(task_id)
    assert match, task_id
    return dict(r.hgetall(f"tb:{{{match['queue']}}}:task:{match['hex']}"))


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


def assert_accepted(response: httpx.Response, pair: Pair, queue: str, status: int = 202) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"id", "status", "status_url"}, body
    match = ID_RE.fullmatch(body["id"])
    assert match and match["queue"] == queue, body["id"]
    assert body["status"] == "queued"
    assert body["status_url"] == f"{pair.status}/tasks/{body['id']}"
    assert response.headers["location"] == body["status_url"]
    return str(body["id"])


@dataclasses.dataclass
class Delivery:
    source: str
    body: bytes
    headers: dict[str, str]
    event: str
    delivery_id: str | None
    task_type: str
    content_type: str = "application/json"
    kept: tuple[str, ...] = ()  # header names that must be kept in the payload


def delivery(source: str, now: int | None = None) -> Delivery:
    """A valid, freshly signed delivery to `source` with a unique delivery id."""
    now = int(time.time()) if now is None else now
    uid = uuid.uuid4().hex[:12]
    if source == "github":
        body = json.dumps({"ref": "refs/heads/main", "after": uid, "repository": {"full_name": "o/r"}}).encode()
        return Delivery(source, body, sign_github(GH_OLD, body, "push", f"gh-{uid}"), "push", f"gh-{uid}",
                        "github.push", kept=("X-GitHub-Event", "X-GitHub-Delivery", "User-Agent"))
    if source == "stripe":
        body = json.dumps({"id": f"evt_{uid}", "object": "event", "type": "invoice.paid",
                           "data": {"object": {"id": "in_1"}}}).encode()
        return Delivery(source, body, sign_stripe(STRIPE_SECRET, body, now), "invoice.paid", f"evt_{uid}",
                        "stripe.invoice.paid")
    if source == "standard":
        body = json.dumps({"type": "user.created", "data": {"id": uid}}).encode()
        return Delivery(source, body, sign_standard(STANDARD_SECRET, body, now, f"msg_{uid}"), "user.created",
                        f"msg_{uid}", "standard.user.created", kept=("webhook-id", "webhook-timestamp"))
    if source == "slack":
        body = json.dumps({"type": "event_callback", "event_id": f"Ev{uid}",
                           "event": {"type": "app_mention", "text": "hi"}}).encode()
        return Delivery(source, body, sign_slack(SLACK_SECRET, body, now), "app_mention", f"Ev{uid}",
                        "slack.app_mention", kept=("X-Slack-Request-Timestamp",))
    if source == "shopify":
        body = json.dumps({"id": 820982911946154508, "note": uid}).encode()
        return Delivery(source, body, sign_shopify(SHOPIFY_SECRET, body, "orders/create", f"se-{uid}"),
                        "orders.create", f"se-{uid}", "shopify.orders.create",
                        kept=("X-Shopify-Topic", "X-Shopify-Event-Id"))
    if source == "acme":
        body = json.dumps({"widget": uid}).encode()
        return Delivery(source, body, sign_acme(ACME_SECRET, body, "widget.created", f"acme-{uid}"),
                        "widget.created", f"acme-{uid}", "acme.widget.created", kept=("X-Acme-Event",))
    raise AssertionError(source)


def signature_header(d: Delivery) -> str:
    (name,) = [h for h in d.headers if h.lower() in SIGNATURE_HEADERS]
    return name


def parse_iso(text: str) -> dt.datetime:
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert moment.tzinfo is not None, text
    return moment


# --------------------------------------------------------------------------- valid deliveries


@pytest.mark.parametrize("source", SOURCES)
def test_valid_delivery_is_202_and_redelivery_is_200_with_the_same_id(hooks: Pair, r: redis.Redis,
                                                                       source: str) -> None:
    d = delivery(source)
    queue = QUEUES[source]
    before = stream_len(r, queue)
    first = post_hook(hooks.enqueue, source, d.body, d.headers, d.content_type)
    task_id = assert_accepted(first, hooks, queue)
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
    assert assert_accepted(again, hooks, queue, status=200) == task_id
    assert stream_len(r, queue) == before + 1


def test_rotated_github_secret_is_accepted(hooks: Pair, r: redis.Redis) -> None:
    d = delivery("github")
    before = stream_len(r, QUEUES["github"])
    headers = {**d.headers, **sign_github(GH_NEW, d.body, "push", d.delivery_id)}
    assert_accepted(post_hook(hooks.enqueue, "github", d.body, headers), hooks, QUEUES["github"])
    assert stream_len(r, QUEUES["github"]) == before + 1


def test_github_form_encoded_payload(hooks: Pair, r: redis.Redis) -> None:
    obj = {"action": "opened", "number": 7, "pull_request": {"title": "a & b = c"}}
    body = urllib.parse.urlencode({"payload": json.dumps(obj)}).encode()
    uid = uuid.uuid4().hex
    response = post_hook(hooks.enqueue, "github", body, sign_github(GH_NEW, body, "pull_request", uid),
                         "application/x-www-form-urlencoded")
    task_id = assert_accepted(response, hooks, QUEUES["github"])
    record = task_record(r, task_id)
    assert record["type"] == "github.pull_request"
    assert json.loads(record["payload"])["body"] == obj


def test_slack_slash_command_form(hooks: Pair, r: redis.Redis) -> None:
    now = int(time.time())
    response = post_hook(hooks.enqueue, "slack", SLACK_DOC_BODY, sign_slack(SLACK_SECRET, SLACK_DOC_BODY, now),
                         "application/x-www-form-urlencoded")
    task_id = assert_accepted(response, hooks, QUEUES["slack"])
    record = task_record(r, task_id)
    assert record["type"] == "slack.command"
    payload = json.loads(record["payload"])
    assert payload["body"]["command"] == "/webhook-collect"
    assert payload["webhook"]["delivery_id"] is None


def test_20_concurrent_identical_deliveries_make_one_task(hooks: Pair, r: redis.Redis) -> None:
    d = delivery("github")
    queue = QUEUES["github"]
    before = stream_len(r, queue)
    barrier = threading.Barrier(20)
    results: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def send() -> None:
        try:
            with httpx.Client(timeout=15) as client:
                barrier.wait(10)
                response = client.post(f"{hooks.enqueue}/hooks/github", content=d.body,
                                       headers={"Content-Type": "application/json", **d.headers})
            with lock:
                results.append((response.status_code, response.json()["id"]))
        except BaseException as exc:  # noqa: BLE001 - reported below
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    assert sorted(code for code, _ in results) == [200] * 19 + [202]
    assert len({task_id for _, task_id in results}) == 1
    assert stream_len(r, queue) == before + 1


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("how", ["tampered", "wrong_secret", "missing"])
def test_bad_signature_is_401_and_enqueues_nothing(hooks: Pair, r: redis.Redis, source: str, how: str) -> None:
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
def test_stale_or_future_timestamp_is_401_invalid_timestamp(hooks: Pair, r: redis.Redis, source: str,
                                                            offset_s: int) -> None:
    d = delivery(source, now=int(time.time()) + offset_s)
    before = stream_len(r, QUEUES[source])
    assert_error(post_hook(hooks.enqueue, source, d.body, d.headers), 401, "invalid_timestamp")
    assert stream_len(r, QUEUES[source]) == before


@pytest.mark.parametrize("source", ["stripe", "slack", "standard"])
def test_webhook_tolerance_setting_bounds_every_timestamped_scheme(hooks: Pair, r: redis.Redis,
                                                                   source: str) -> None:
    """A delivery 200 s old: inside the libraries' usual 5 minutes, outside WEBHOOK_TOLERANCE_S=120."""
    d = delivery(source, now=int(time.time()) - 200)
    before = stream_len(r, QUEUES[source])
    assert_error(post_hook(hooks.enqueue, source, d.body, d.headers), 401, "invalid_timestamp")
    assert stream_len(r, QUEUES[source]) == before


def test_dedupe_window_is_webhook_dedupe_ttl_s(hooks: Pair, r: redis.Redis) -> None:
    queue = QUEUES["acme"]
    pattern = f"tb:{{{queue}}}:idem:*"
    keys_before = set(r.keys(pattern))
    d = delivery("acme")
    assert_accepted(post_hook(hooks.enqueue, "acme", d.body, d.headers), hooks, queue)
    (new_key,) = set(r.keys(pattern)) - keys_before
    assert DEDUPE_TTL_S - 60 < r.ttl(new_key) <= DEDUPE_TTL_S


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_on_hooks_are_405(hooks: Pair, method: str) -> None:
    response = httpx.request(method, f"{hooks.enqueue}/hooks/github")
    assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["allow"]


def test_unknown_source_is_404(hooks: Pair) -> None:
    d = delivery("github")
    error = assert_error(post_hook(hooks.enqueue, "gitlab", d.body, d.headers), 404, "not_found")
    assert "gitlab" in error["message"]
    assert_error(post_hook(hooks.enqueue, "GitHub", d.body, d.headers), 404, "not_found")


def test_body_over_the_limit_is_413(hooks: Pair, r: redis.Redis) -> None:
    body = json.dumps({"ref": "refs/heads/main", "pad": "x" * MAX_BODY}).encode()
    assert len(body) > MAX_BODY
    before = stream_len(r, QUEUES["github"])
    response = post_hook(hooks.enqueue, "github", body, sign_github(GH_OLD, body, "push", uuid.uuid4().hex))
    assert_error(response, 413, "payload_too_large")
    assert stream_len(r, QUEUES["github"]) == before


def test_wrong_content_type_after_a_valid_signature_is_415(hooks: Pair, r: redis.Redis) -> None:
    d = delivery("stripe")
    before = stream_len(r, QUEUES["stripe"])
    assert_error(post_hook(hooks.enqueue, "stripe", d.body, d.headers, "text/plain"), 415, "unsupported_media_type")
    assert stream_len(r, QUEUES["stripe"]) == before


def test_github_ping_is_200_and_makes_no_task(hooks: Pair, r: redis.Redis) -> None:
    body = json.dumps({"zen": "Design for failure.", "hook_id": 12345, "hook": {"type": "Repository"}}).encode()
    queue = QUEUES["github"]
    before, keys_before = stream_len(r, queue), task_keys(r, queue)
    response = post_hook(hooks.enqueue, "github", body, sign_github(GH_OLD, body, "ping", uuid.uuid4().hex))
    assert response.status_code == 200, response.text
    assert response.json() == {"ok": True, "event": "ping"}
    assert stream_len(r, queue) == before
    assert task_keys(r, queue) == keys_before
    unsigned = post_hook(hooks.enqueue, "github", body, sign_github("nope", body, "ping", uuid.uuid4().hex))
    assert_error(unsigned, 401, "invalid_signature")


def test_slack_url_verification_answers_the_challenge_and_makes_no_task(hooks: Pair, r: redis.Redis) -> None:
    challenge = f"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P{uuid.uuid4().hex}"
    body = json.dumps({"token": "Jhj5dZrVaK7ZwHHjRyZWjbDl", "challenge": challenge,
                       "type": "url_verification"}).encode()
    queue = QUEUES["slack"]
    before, keys_before = stream_len(r, queue), task_keys(r, queue)
    response = post_hook(hooks.enqueue, "slack", body, sign_slack(SLACK_SECRET, body, int(time.time())))
    assert response.status_code == 200, response.text
    assert response.json() == {"challenge": challenge}
    assert stream_len(r, queue) == before
    assert task_keys(r, queue) == keys_before


# --------------------------------------------------------------------------- start-up and logs


def test_source_without_a_secret_refuses_to_start(base_settings: Settings, tmp_path: Path) -> None:
    settings = fresh_settings(base_settings)
    proc = spawn("enqueue", settings, tmp_path, WEBHOOK_SOURCES="github,orphan",
                 WEBHOOK_GITHUB_SECRET=ORPHAN_GH_SECRET, WEBHOOK_ORPHAN_SCHEME="hmac")
    try:
        wait_until(lambda: proc.popen.poll() is not None, timeout=20, message="enqueue to exit")
    finally:
        proc.kill()
    output = proc.output()
    assert proc.popen.returncode != 0, output
    assert "webhook source 'orphan' has no secret" in output
    assert "WEBHOOK_ORPHAN_SECRET" in output
    assert ORPHAN_GH_SECRET not in output


def test_secrets_never_reach_the_logs(hooks: Pair, keyed: Pair) -> None:
    """Runs after the tests above (file order): the logs hold all their traffic."""
    # more traffic, failures included, right before reading
    d = delivery("acme")
    post_hook(hooks.enqueue, "acme", d.body, {**d.headers, "X-Acme-Signature": "sha256=" + hex_mac("x", d.body)})
    post_hook(hooks.enqueue, "acme", d.body, d.headers)
    httpx.post(keyed.enqueue + "/tasks", json={"type": "t"}, headers={"Authorization": "Bearer wrong"})
    logs = {f"{pair}/{name}": proc.output() for pair, p in (("hooks", hooks), ("keyed", keyed))
            for name, proc in p.procs.items()}
    assert "webhook sources enabled" in logs["hooks/enqueue"], logs["hooks/enqueue"][-2000:]
    for name in SOURCES:
        assert name in logs["hooks/enqueue"]
    for where, text in logs.items():
        for secret in (*ALL_SECRETS, K1, K2):
            assert secret not in text, f"a secret appears in the {where} log"


# --------------------------------------------------------------------------- API keys


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def assert_unauthorized(response: httpx.Response) -> None:
    assert_error(response, 401, "unauthorized")
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("headers", [{}, bearer("wrong"), {"Authorization": "Bearer"}, {"Authorization": K1},
                                     {"Authorization": f"Basic {K1}"}, bearer(K1 + "x"), bearer(K1[:-1])],
                         ids=["none", "wrong", "empty", "no-scheme", "basic", "longer", "shorter"])
def test_create_without_a_valid_key_is_401(keyed: Pair, r: redis.Redis, queue: str,
                                           headers: dict[str, str]) -> None:
    response = httpx.post(keyed.enqueue + "/tasks", json={"type": "t", "queue": queue}, headers=headers)
    assert_unauthorized(response)
    assert stream_len(r, queue) == 0
    assert_unauthorized(httpx.post(keyed.enqueue + "/enqueue", json={"a": 1}, headers=headers))


@pytest.mark.parametrize("key", ["k1", "k2"])
def test_create_with_either_key_is_202_and_status_needs_a_key(keyed: Pair, r: redis.Redis, queue: str,
                                                             key: str) -> None:
    token = {"k1": K1, "k2": K2}[key]
    response = httpx.post(keyed.enqueue + "/tasks", json={"type": "t", "queue": queue}, headers=bearer(token))
    assert response.status_code == 202, response.text
    task_id = response.json()["id"]
    assert stream_len(r, queue) == 1
    assert_unauthorized(httpx.get(f"{keyed.status}/tasks/{task_id}"))
    assert_unauthorized(httpx.get(f"{keyed.status}/tasks/{task_id}", headers=bearer("wrong")))
    assert_unauthorized(httpx.get(f"{keyed.status}/task/{task_id}"))
    other = K2 if token == K1 else K1
    shown = httpx.get(f"{keyed.status}/tasks/{task_id}", headers=bearer(other))
    assert shown.status_code == 200, shown.text
    assert shown.json()["id"] == task_id and shown.json()["status"] == "queued"
    lower = httpx.get(f"{keyed.status}/tasks/{task_id}", headers={"Authorization": f"bearer {token}"})
    assert lower.status_code == 200, lower.text


def test_legacy_enqueue_with_a_key_is_202(keyed: Pair) -> None:
    response = httpx.post(keyed.enqueue + "/enqueue", json={"a": 1}, headers=bearer(K2))
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"


@pytest.mark.parametrize("function", ["enqueue", "status"])
def test_healthz_needs_no_key(keyed: Pair, function: str) -> None:
    response = httpx.get(getattr(keyed, function) + "/healthz")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_hooks_need_a_signature_not_a_key(keyed: Pair, r: redis.Redis) -> None:
    body = json.dumps({"ref": "refs/heads/dev", "commits": []}).encode()
    before = stream_len(r, E2E_QUEUE)
    signed = post_hook(keyed.enqueue, "github", body, sign_github(KEYED_GH_SECRET, body, "push", uuid.uuid4().hex))
    assert_accepted(signed, keyed, E2E_QUEUE)
    wrong = post_hook(keyed.enqueue, "github", body, sign_github(GH_OLD, body, "push", uuid.uuid4().hex),
                      **bearer(K1))
    assert_error(wrong, 401, "invalid_signature")  # a key does not stand in for a signature
    assert stream_len(r, E2E_QUEUE) == before + 1  # no worker runs here (the end-to-end test's is gone)


# --------------------------------------------------------------------------- end to end


def long_poll(pair: Pair, task_id: str, key: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        wait = min(10.0, max(1.0, deadline - time.monotonic()))
        response = httpx.get(f"{pair.status}/tasks/{task_id}", params={"wait": wait}, headers=bearer(key),
                             timeout=wait + 10)
        assert response.status_code == 200, response.text
        task = dict(response.json())
        if task["status"] in ("succeeded", "failed") or time.monotonic() > deadline:
            return task


def test_signed_github_push_runs_on_a_worker(keyed: Pair, workers: Callable[..., Proc]) -> None:
    body = json.dumps({"ref": "refs/heads/main", "before": "000", "after": "abc",
                       "commits": [{"id": "abc", "message": "fix"}], "head_commit": {"id": "abc"},
                       "repository": {"full_name": "o/r"}, "pusher": {"name": "octocat"}}).encode()
    response = post_hook(keyed.enqueue, "github", body, sign_github(KEYED_GH_SECRET, body, "push", uuid.uuid4().hex))
    task_id = assert_accepted(response, keyed, E2E_QUEUE)
    workers(queues=(E2E_QUEUE,), handlers="tests.handlers")
    task = long_poll(keyed, task_id, K1)
    assert task["type"] == "github.push"
    assert task["queue"] == E2E_QUEUE
    assert task["attempts"] >= 1, task
    assert task["status"] == "succeeded", f"github.push did not succeed: {task['error']}"
    assert "refs/heads/main" in json.dumps(task["result"]), task["result"]
