"""The webhook set-up both tiers use: six sources, each writing to a queue unique to this run
(so stream lengths are exact oracles), distinctive secrets, and freshly signed deliveries."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import time
import uuid
from pathlib import Path

import redis

from taskbus.settings import Settings
from testkit.signing import (
    STANDARD_SECRET,
    sign_acme,
    sign_github,
    sign_shopify,
    sign_slack,
    sign_standard,
    sign_stripe,
)
from tests.http.helpers import KEYS

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


def hook_settings(settings: Settings) -> Settings:
    """`settings` with the webhook tolerance, dedupe window and body limit these tests observe."""
    return dataclasses.replace(settings, max_body_bytes=MAX_BODY, webhook_tolerance_s=TOLERANCE_S,
                               webhook_dedupe_ttl_s=DEDUPE_TTL_S)


def webhook_env(secret_dir: Path) -> dict[str, str]:
    """WEBHOOK_* for the six sources (Slack's secret from a file); the other webhook settings
    are Settings fields (`hook_settings`)."""
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
    }
    env.update({f"WEBHOOK_{name.upper()}_QUEUE": queue for name, queue in QUEUES.items()})
    return env


def keyed_env() -> dict[str, str]:
    """API_KEYS set; one GitHub source on the end-to-end queue."""
    return {"API_KEYS": f"{K1},{K2}", "WEBHOOK_SOURCES": "github", "WEBHOOK_GITHUB_SECRET": KEYED_GH_SECRET,
            "WEBHOOK_GITHUB_QUEUE": E2E_QUEUE}


def stream_len(r: redis.Redis, queue: str) -> int:
    return int(r.xlen(KEYS.stream(queue)))


def task_keys(r: redis.Redis, queue: str) -> set[str]:
    return set(r.keys(f"{KEYS.prefix}:{{{queue}}}:task:*"))


def task_record(r: redis.Redis, task_id: str) -> dict[str, str]:
    assert ID_RE.fullmatch(task_id), task_id
    return dict(r.hgetall(KEYS.task(task_id)))


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
