"""Webhook sources: configuration, signature schemes, and turning a delivery into a task.

Each scheme verifies the raw body bytes before anything parses them, compares in constant
time, accepts several secrets at once (rotation), and says only "signature" or "timestamp"
when it refuses. Secrets never reach a log line or a repr.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime as dt
import hashlib
import hmac
import re
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import standardwebhooks

from taskbus import codec
from taskbus.errors import BadRequest, ConfigError, Unauthorized, UnsupportedMediaType
from taskbus.task import NAME_RE

SCHEMES = ("github", "stripe", "standard", "slack", "shopify", "hmac")
ALGORITHMS = ("sha1", "sha256", "sha512")


@dataclasses.dataclass(frozen=True)
class Source:
    """One configured webhook source (`WEBHOOK_<NAME>_*`)."""

    name: str
    scheme: str
    secrets: tuple[str, ...] = dataclasses.field(repr=False)
    queue: str = "default"
    # the generic `hmac` scheme only:
    header: str = "X-Signature"
    algorithm: str = "sha256"
    encoding: str = "hex"
    prefix: str = ""
    event_header: str = ""
    id_header: str = ""


@dataclasses.dataclass(frozen=True)
class Verified:
    """A delivery whose signature checked out."""

    event: str
    delivery_id: str | None
    body: Any
    headers: dict[str, str]
    reply: Any = None  # set when the sender expects an answer now (Slack challenge, GitHub ping)


def sources_from_env(env: Mapping[str, str]) -> tuple[Source, ...]:
    """Read `WEBHOOK_SOURCES` and each source's settings; refuse a source without a secret."""
    names = [n.strip().lower() for n in env.get("WEBHOOK_SOURCES", "").split(",") if n.strip()]
    sources = []
    for name in names:
        if not re.fullmatch(r"[a-z0-9_]{1,64}", name):
            raise ConfigError(f"WEBHOOK_SOURCES: {name!r} must be 1-64 characters of a-z 0-9 _")
        var = f"WEBHOOK_{name.upper()}_"
        scheme = env.get(var + "SCHEME", name if name in SCHEMES else "").lower()
        if scheme not in SCHEMES:
            raise ConfigError(f"{var}SCHEME must be one of {', '.join(SCHEMES)} (source {name!r})")
        secrets = _secrets(env, var)
        if not secrets:
            raise ConfigError(f"webhook source {name!r} has no secret: set {var}SECRET or {var}SECRET_FILE")
        source = Source(
            name=name,
            scheme=scheme,
            secrets=secrets,
            queue=env.get(var + "QUEUE", "default"),
            header=env.get(var + "HEADER", "X-Signature"),
            algorithm=env.get(var + "ALGORITHM", "sha256").lower(),
            encoding=env.get(var + "ENCODING", "hex").lower(),
            prefix=env.get(var + "PREFIX", ""),
            event_header=env.get(var + "EVENT_HEADER", ""),
            id_header=env.get(var + "ID_HEADER", ""),
        )
        if not NAME_RE.fullmatch(source.queue):
            raise ConfigError(f"{var}QUEUE must be 1-128 characters of A-Z a-z 0-9 _ . : -")
        if source.algorithm not in ALGORITHMS or source.encoding not in ("hex", "base64"):
            raise ConfigError(f"{var}ALGORITHM must be one of {ALGORITHMS} and {var}ENCODING hex or base64")
        if scheme == "standard":
            for secret in secrets:
                try:
                    standardwebhooks.Webhook(secret)
                except (ValueError, binascii.Error, standardwebhooks.webhooks.EmptyWebhookSecretError):
                    raise ConfigError(f"{var}SECRET: a Standard Webhooks secret is whsec_ + base64") from None
        sources.append(source)
    return tuple(sources)


def _secrets(env: Mapping[str, str], var: str) -> tuple[str, ...]:
    raw = env.get(var + "SECRET", "")
    path = env.get(var + "SECRET_FILE", "")
    if path:
        try:
            raw = Path(path).read_text("utf-8")
        except OSError as exc:
            raise ConfigError(f"{var}SECRET_FILE cannot be read: {exc.strerror}") from None
    return tuple(s.strip() for s in raw.replace("\n", ",").split(",") if s.strip())


def task_type(source: str, event: str) -> str:
    """`<source>.<event>`, characters outside the task-type alphabet mapped to `.`."""
    name = re.sub(r"[^A-Za-z0-9_.:-]", ".", f"{source}.{event or 'unknown'}")
    return name[:128]


def verify(
    source: Source, headers: Mapping[str, str], body: bytes, content_type: str, now: float, tolerance_s: float
) -> Verified:
    """Check the signature over the raw `body`, then parse it; raises `Unauthorized` (401),
    `BadRequest` (400) or `UnsupportedMediaType` (415)."""
    return _SCHEMES[source.scheme](source, headers, body, content_type, now, tolerance_s)


# -- helpers ------------------------------------------------------------------------------


def _bad_signature() -> Unauthorized:
    return Unauthorized("webhook signature verification failed", code="invalid_signature")


def _bad_timestamp() -> Unauthorized:
    return Unauthorized("webhook timestamp outside the tolerance window", code="invalid_timestamp")


def _mac(secret: bytes, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(secret, message, getattr(hashlib, algorithm)).digest()


def _any_matches(candidates: list[bytes], expected: list[bytes]) -> bool:
    """Constant-time comparison of every candidate against every expected digest."""
    found = False
    for candidate in candidates:
        for digest in expected:
            found |= hmac.compare_digest(candidate, digest)
    return found


def _unhex(text: str) -> bytes:
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise _bad_signature() from None


def _unbase64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _bad_signature() from None


def _timestamp(raw: str | None, now: float, tolerance_s: float) -> None:
    """Refuse timestamps too old or too far in the future (replay window)."""
    try:
        stamp = int(raw or "")
    except ValueError:
        raise _bad_timestamp() from None
    if abs(now - stamp) > tolerance_s:
        raise _bad_timestamp()


def _parse(body: bytes, content_type: str, form: bool = False) -> Any:
    if content_type == "application/json":
        return codec.loads_strict(body)
    if form and content_type == "application/x-www-form-urlencoded":
        try:
            text = body.decode("utf-8")
            pairs = urllib.parse.parse_qsl(
                text, keep_blank_values=True, strict_parsing=bool(text), errors="strict", max_num_fields=1000
            )
        except (UnicodeDecodeError, ValueError):
            raise BadRequest("malformed form body") from None
        fields: dict[str, Any] = {}
        for key, value in pairs:
            fields.setdefault(key, value)
        if isinstance(fields.get("payload"), str):
            return codec.loads_strict(fields["payload"].encode("utf-8"))
        return fields
    accepted = "application/json" + (" or application/x-www-form-urlencoded" if form else "")
    raise UnsupportedMediaType(f"Content-Type must be {accepted}")


def _pick(headers: Mapping[str, str], *names: str) -> dict[str, str]:
    return {name: headers[name] for name in names if name in headers}


def _field(body: Any, name: str) -> str:
    value = body.get(name) if isinstance(body, dict) else None
    return value if isinstance(value, str) else ""


# -- schemes ------------------------------------------------------------------------------

Scheme = Callable[[Source, Mapping[str, str], bytes, str, float, float], Verified]


def _github(source: Source, headers: Mapping[str, str], body: bytes, ctype: str, now: float, tol: float) -> Verified:
    header = headers.get("X-Hub-Signature-256", "")
    if not header.startswith("sha256="):
        raise _bad_signature()
    given = _unhex(header[len("sha256=") :])
    if not _any_matches([given], [_mac(s.encode(), body) for s in source.secrets]):
        raise _bad_signature()
    parsed = _parse(body, ctype, form=True)
    event = headers.get("X-GitHub-Event", "")
    kept = _pick(
        headers,
        "X-GitHub-Event",
        "X-GitHub-Delivery",
        "X-GitHub-Hook-ID",
        "X-GitHub-Hook-Installation-Target-Type",
        "X-GitHub-Hook-Installation-Target-ID",
        "User-Agent",
    )
    reply = {"ok": True, "event": "ping"} if event == "ping" else None
    return Verified(event, headers.get("X-GitHub-Delivery") or None, parsed, kept, reply)


def _stripe(source: Source, headers: Mapping[str, str], body: bytes, ctype: str, now: float, tol: float) -> Verified:
    parts: dict[str, list[str]] = {}
    for item in headers.get("Stripe-Signature", "").split(","):
        key, _, value = item.strip().partition("=")
        parts.setdefault(key, []).append(value)
    stamps, signatures = parts.get("t", []), [s for s in parts.get("v1", []) if s]
    if len(stamps) != 1 or not signatures:
        raise _bad_signature()
    expected = [_mac(s.encode(), stamps[0].encode() + b"." + body) for s in source.secrets]
    if not _any_matches([_unhex(s) for s in signatures], expected):
        raise _bad_signature()
    _timestamp(stamps[0], now, tol)
    parsed = _parse(body, ctype)
    return Verified(_field(parsed, "type"), _field(parsed, "id") or None, parsed, {})


def _standard(source: Source, headers: Mapping[str, str], body: bytes, ctype: str, now: float, tol: float) -> Verified:
    """Standard Webhooks. The `standardwebhooks` package computes the signature; its own
    verify() is not used because it checks the timestamp against its fixed 5-minute window
    and the real clock, not WEBHOOK_TOLERANCE_S."""
    msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not msg_id or not stamp.isdigit():
        raise _bad_signature()
    try:
        text = body.decode("utf-8")
        moment = dt.datetime.fromtimestamp(int(stamp), dt.timezone.utc)
        expected = [
            _unbase64(standardwebhooks.Webhook(s).sign(msg_id, moment, text).split(",", 1)[1]) for s in source.secrets
        ]
    except (ValueError, OverflowError, OSError):  # not UTF-8 (a ValueError), absurd timestamp
        raise _bad_signature() from None
    given = [_unbase64(sig[3:]) for sig in headers.get("webhook-signature", "").split() if sig.startswith("v1,")]
    if not given or not _any_matches(given, expected):
        raise _bad_signature()
    _timestamp(stamp, now, tol)
    parsed = _parse(body, ctype)
    return Verified(_field(parsed, "type"), msg_id, parsed, {"webhook-id": msg_id, "webhook-timestamp": stamp})


def _slack(source: Source, headers: Mapping[str, str], body: bytes, ctype: str, now: float, tol: float) -> Verified:
    header = headers.get("X-Slack-Signature", "")
    stamp = headers.get("X-Slack-Request-Timestamp", "")
    if not header.startswith("v0="):
        raise _bad_signature()
    expected = [_mac(s.encode(), b"v0:" + stamp.encode() + b":" + body) for s in source.secrets]
    if not _any_matches([_unhex(header[3:])], expected):
        raise _bad_signature()
    _timestamp(stamp, now, tol)
    parsed = _parse(body, ctype, form=True)
    kept = _pick(headers, "X-Slack-Request-Timestamp", "X-Slack-Retry-Num", "X-Slack-Retry-Reason")
    kind = _field(parsed, "type")
    if kind == "url_verification":
        return Verified(kind, None, parsed, kept, reply={"challenge": _field(parsed, "challenge")})
    if kind == "event_callback":
        inner = parsed.get("event") if isinstance(parsed, dict) else None
        event = _field(inner, "type") or kind
        return Verified(event, _field(parsed, "event_id") or None, parsed, kept)
    if _field(parsed, "command"):
        return Verified("command", None, parsed, kept)  # slash commands carry no delivery id
    return Verified(kind, None, parsed, kept)


def _shopify(source: Source, headers: Mapping[str, str], body: bytes, ctype: str, now: float, tol: float) -> Verified:
    given = _unbase64(headers.get("X-Shopify-Hmac-Sha256", ""))
    if not given or not _any_matches([given], [_mac(s.encode(), body) for s in source.secrets]):
        raise _bad_signature()
    parsed = _parse(body, ctype)
    kept = _pick(
        headers,
        "X-Shopify-Topic",
        "X-Shopify-Shop-Domain",
        "X-Shopify-Event-Id",
        "X-Shopify-Webhook-Id",
        "X-Shopify-API-Version",
        "X-Shopify-Triggered-At",
    )
    delivery = headers.get("X-Shopify-Event-Id") or headers.get("X-Shopify-Webhook-Id") or None
    return Verified(headers.get("X-Shopify-Topic", "").replace("/", "."), delivery, parsed, kept)


def _generic(source: Source, headers: Mapping[str, str], body: bytes, ctype: str, now: float, tol: float) -> Verified:
    header = headers.get(source.header, "")
    if not header.startswith(source.prefix):
        raise _bad_signature()
    text = header[len(source.prefix) :]
    given = _unhex(text) if source.encoding == "hex" else _unbase64(text)
    if not _any_matches([given], [_mac(s.encode(), body, source.algorithm) for s in source.secrets]):
        raise _bad_signature()
    parsed = _parse(body, ctype)
    event = headers.get(source.event_header, "") if source.event_header else _field(parsed, "type")
    delivery = headers.get(source.id_header) if source.id_header else None
    kept = _pick(headers, *(h for h in (source.event_header, source.id_header) if h))
    return Verified(event, delivery or None, parsed, kept)


_SCHEMES: dict[str, Scheme] = {
    "github": _github,
    "stripe": _stripe,
    "standard": _standard,
    "slack": _slack,
    "shopify": _shopify,
    "hmac": _generic,
}
