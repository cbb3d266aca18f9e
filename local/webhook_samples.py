"""Development webhook secrets and signed sample deliveries, so `make up` users can watch
a webhook go from signature check to handler without a provider:

    python -m local send-webhook github push

`send_to_stack` finds the running stack's enqueue URL and secrets in its run directory
(`local.rundir`), so it needs none of the stack's environment.
"""

from __future__ import annotations

import base64
import json
import secrets
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from testkit import signing

SOURCES = ("github", "stripe", "standard", "slack", "shopify")


def dev_env(run_dir: Path) -> dict[str, str]:
    """WEBHOOK_* settings for the local stack, with secrets generated once per checkout."""
    path = run_dir / "webhook-secrets.json"
    if path.exists():
        stored = json.loads(path.read_text())
    else:
        stored = {
            "github": secrets.token_hex(20),
            "slack": secrets.token_hex(16),
            "shopify": secrets.token_hex(16),
            "stripe": "whsec_" + secrets.token_hex(16),
            "standard": "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode(),
        }
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stored))
        path.chmod(0o600)
    env = {"WEBHOOK_SOURCES": ",".join(SOURCES)}
    env.update({f"WEBHOOK_{name.upper()}_SECRET": stored[name] for name in SOURCES})
    return env


def _github(event: str, delivery: str, now: int, secret: str) -> tuple[bytes, dict[str, str]]:
    body = _json(
        {"zen": "Keep it logically awesome.", "hook_id": 1}
        if event == "ping"
        else {
            "ref": "refs/heads/main",
            "before": "0" * 40,
            "after": "a" * 40,
            "repository": {"full_name": "octo-org/hello-world"},
            "commits": [{"id": "a" * 40, "message": "Update README"}],
            "head_commit": {"id": "a" * 40},
        }
    )
    return body, signing.sign_github(secret, body, event, delivery)


def _stripe(event: str, delivery: str, now: int, secret: str) -> tuple[bytes, dict[str, str]]:
    body = _json(
        {
            "id": f"evt_{delivery.replace('-', '')[:24]}",
            "object": "event",
            "type": event,
            "data": {"object": {"id": "in_123", "object": "invoice"}},
        }
    )
    return body, signing.sign_stripe(secret, body, now)


def _standard(event: str, delivery: str, now: int, secret: str) -> tuple[bytes, dict[str, str]]:
    body = _json({"type": event, "timestamp": str(now), "data": {"id": "user_123"}})
    return body, signing.sign_standard(secret, body, now, f"msg_{delivery}")


def _slack(event: str, delivery: str, now: int, secret: str) -> tuple[bytes, dict[str, str]]:
    body = _json(
        {
            "type": "event_callback",
            "event_id": f"Ev{delivery[:8]}",
            "event": {"type": event, "text": "hello", "user": "U123"},
        }
    )
    return body, signing.sign_slack(secret, body, now)


def _shopify(event: str, delivery: str, now: int, secret: str) -> tuple[bytes, dict[str, str]]:
    body = _json({"id": 820982911946154508, "email": "jon@example.com", "total_price": "10.00"})
    return body, signing.sign_shopify(secret, body, event.replace(".", "/"), delivery)


_SAMPLES: dict[str, Callable[[str, str, int, str], tuple[bytes, dict[str, str]]]] = {
    "github": _github,
    "stripe": _stripe,
    "standard": _standard,
    "slack": _slack,
    "shopify": _shopify,
}


def sample(scheme: str, event: str, secret: str) -> tuple[bytes, dict[str, str]]:
    """A signed delivery (body, headers) of `scheme` for `event`, signed as the tests sign them."""
    if scheme not in _SAMPLES:
        raise SystemExit(f"no sample for scheme {scheme!r}; samples exist for {', '.join(SOURCES)}")
    return _SAMPLES[scheme](event, str(uuid.uuid4()), int(time.time()), secret)


DEFAULT_EVENTS = {
    "github": "push",
    "stripe": "invoice.paid",
    "standard": "user.created",
    "slack": "app_mention",
    "shopify": "orders.create",
}


def send(base_url: str, source: str, event: str | None, secret: str, scheme: str | None = None) -> tuple[int, Any]:
    """POST a signed sample to `base_url`/hooks/`source` (signed by `scheme`, default the
    source's name); the answer's status and JSON body."""
    scheme = scheme or source
    body, headers = sample(scheme, event or DEFAULT_EVENTS.get(scheme, "test"), secret)
    request = urllib.request.Request(
        f"{base_url}/hooks/{source}", data=body, method="POST", headers={"Content-Type": "application/json", **headers}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def send_to_stack(source: str, event: str | None, environ: Mapping[str, str]) -> int:
    """`python -m local send-webhook`: print the answer's status and body; 0 on a 2xx."""
    from local.rundir import NoStack, RunDir
    from local.stack import run_dir

    try:
        stack = RunDir(run_dir(environ)).read_stack()
    except NoStack as exc:
        print(f"send-webhook: {exc}", file=sys.stderr)
        return 1
    hook = stack.webhooks.get(source)
    if hook is None:
        enabled = ", ".join(sorted(stack.webhooks)) or "none"
        print(f"send-webhook: the running stack has no webhook source {source!r} (enabled: {enabled})", file=sys.stderr)
        return 1
    if hook["scheme"] not in _SAMPLES:
        print(f"send-webhook: no sample for source {source!r} (scheme {hook['scheme']}); samples exist for "
              f"{', '.join(SOURCES)}", file=sys.stderr)
        return 1
    try:
        code, answer = send(stack.enqueue_url, source, event, hook["secret"], hook["scheme"])
    except OSError as exc:
        print(f"send-webhook: the stack's enqueue function at {stack.enqueue_url} does not answer "
              f"({getattr(exc, 'reason', exc)})", file=sys.stderr)
        return 1
    print(code, json.dumps(answer))
    return 0 if code < 300 else 1


def _json(value: Any) -> bytes:
    return json.dumps(value).encode()
