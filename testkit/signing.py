"""One signer per webhook scheme: the headers a provider sends with `body`, signed with
`secret`. Shared by the webhook tests and `python -m local send-webhook`, so a signature the
tests accept is the one the local samples send.

Standard Webhooks is signed by its reference library (`standardwebhooks`), not by us: an
independent implementation checks ours. The providers' own published examples follow.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
from collections.abc import Callable

import standardwebhooks

Signer = Callable[[str, bytes, int], dict[str, str]]  # (secret, body, unix time) -> headers


def hex_mac(secret: str, message: bytes, algorithm: str = "sha256") -> str:
    return hmac.new(secret.encode(), message, getattr(hashlib, algorithm)).hexdigest()


def b64_mac(secret: str, message: bytes, algorithm: str = "sha256") -> str:
    return base64.b64encode(hmac.new(secret.encode(), message, getattr(hashlib, algorithm)).digest()).decode()


def sign_github(secret: str, body: bytes, event: str = "push",
                delivery: str | None = "gh-delivery-1") -> dict[str, str]:
    headers = {"X-Hub-Signature-256": "sha256=" + hex_mac(secret, body), "X-GitHub-Event": event,
               "X-GitHub-Hook-ID": "4242", "User-Agent": "GitHub-Hookshot/abc123"}
    if delivery is not None:
        headers["X-GitHub-Delivery"] = delivery
    return headers


def sign_stripe(secret: str, body: bytes, ts: int | str) -> dict[str, str]:
    return {"Stripe-Signature": f"t={ts},v1={hex_mac(secret, f'{ts}.'.encode() + body)}"}


def sign_standard(secret: str, body: bytes, ts: int, msg_id: str = "msg_2a3b4c5d") -> dict[str, str]:
    moment = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
    signature = standardwebhooks.Webhook(secret).sign(msg_id, moment, body.decode())
    return {"webhook-id": msg_id, "webhook-timestamp": str(ts), "webhook-signature": signature}


def sign_slack(secret: str, body: bytes, ts: int | str) -> dict[str, str]:
    mac = hex_mac(secret, f"v0:{ts}:".encode() + body)
    return {"X-Slack-Request-Timestamp": str(ts), "X-Slack-Signature": "v0=" + mac}


def sign_shopify(secret: str, body: bytes, topic: str = "orders/create",
                 event_id: str | None = "shop-event-1") -> dict[str, str]:
    headers = {"X-Shopify-Hmac-Sha256": b64_mac(secret, body), "X-Shopify-Topic": topic,
               "X-Shopify-Shop-Domain": "example.myshopify.com", "X-Shopify-Webhook-Id": "shop-webhook-1"}
    if event_id is not None:
        headers["X-Shopify-Event-Id"] = event_id
    return headers


def sign_acme(secret: str, body: bytes, event: str = "widget.created", delivery: str = "acme-1") -> dict[str, str]:
    """The generic `hmac` scheme as the tests configure it (source "acme": WEBHOOK_ACME_*)."""
    return {"X-Acme-Signature": "sha256=" + hex_mac(secret, body), "X-Acme-Event": event, "X-Acme-Delivery": delivery}


# A secret in Standard Webhooks' own format (whsec_ + base64 of the key).
STANDARD_SECRET = "whsec_" + base64.b64encode(b"standard-webhooks-secret-32bytes").decode()

# --------------------------------------------------------------------------- published test vectors

GITHUB_DOC_SECRET = "It's a Secret to Everybody"
GITHUB_DOC_BODY = b"Hello, World!"
GITHUB_DOC_SIGNATURE = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17"

STANDARD_DOC_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
STANDARD_DOC_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
STANDARD_DOC_TS = 1614265330
STANDARD_DOC_BODY = b'{"test": 2432232314}'
STANDARD_DOC_SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

SLACK_DOC_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
SLACK_DOC_TS = 1531420618
SLACK_DOC_BODY = (
    b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V"
    b"&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text="
    b"&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN"
    b"&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
)
SLACK_DOC_SIGNATURE = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"
