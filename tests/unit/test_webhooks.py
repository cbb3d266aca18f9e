"""Unit tests of `taskbus.webhooks`, no HTTP: every scheme's signature check, timestamps,
rotation, body parsing, event naming and the configuration read from the environment.

Headers are passed as a `werkzeug.datastructures.Headers`, as the HTTP layer passes them
(case-insensitive names). The signers and the providers' published vectors are in `testkit.signing`.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
from werkzeug.datastructures import Headers

from taskbus import webhooks
from taskbus.errors import BadRequest, ConfigError, Unauthorized, UnsupportedMediaType
from taskbus.http import status_of
from taskbus.task import NAME_RE
from taskbus.webhooks import Source, Verified, sources_from_env, task_type, verify
from testkit.signing import (
    GITHUB_DOC_BODY,
    GITHUB_DOC_SECRET,
    GITHUB_DOC_SIGNATURE,
    SLACK_DOC_BODY,
    SLACK_DOC_SECRET,
    SLACK_DOC_SIGNATURE,
    SLACK_DOC_TS,
    STANDARD_DOC_BODY,
    STANDARD_DOC_ID,
    STANDARD_DOC_SECRET,
    STANDARD_DOC_SIGNATURE,
    STANDARD_DOC_TS,
    STANDARD_SECRET,
    b64_mac,
    hex_mac,
    sign_acme,
    sign_github,
    sign_shopify,
    sign_slack,
    sign_standard,
    sign_stripe,
)

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
TOLERANCE_S = 300.0

STANDARD_OTHER = "whsec_" + base64.b64encode(b"standard-webhooks-rotated-secret").decode()
STANDARD_WRONG = "whsec_" + base64.b64encode(b"standard-webhooks-wrong-secret!!").decode()


ACME = dict(header="X-Acme-Signature", prefix="sha256=", algorithm="sha256", encoding="hex",
            event_header="X-Acme-Event", id_header="X-Acme-Delivery")


def raises(exc_type: type[Exception], fn: Callable[[], Any]) -> Exception:
    with pytest.raises(exc_type) as info:
        fn()
    return info.value


def refused(code: str, source: Source, headers: dict[str, str], body: bytes, ctype: str = JSON,
            now: float | None = None, tolerance_s: float = TOLERANCE_S) -> Unauthorized:
    exc = raises(Unauthorized, lambda: verify(source, Headers(headers), body, ctype,
                                               time.time() if now is None else now, tolerance_s))
    assert isinstance(exc, Unauthorized)
    assert status_of(exc) == 401
    assert exc.code == code, f"expected {code}, got {exc.code}: {exc.message}"
    for secret in source.secrets:
        assert secret not in str(exc), "the refusal must not echo a secret"
    return exc


def accepted(source: Source, headers: dict[str, str], body: bytes, ctype: str = JSON, now: float | None = None,
             tolerance_s: float = TOLERANCE_S) -> Verified:
    return verify(source, Headers(headers), body, ctype, time.time() if now is None else now, tolerance_s)


# --------------------------------------------------------------------------- the cases, one per scheme


@dataclasses.dataclass(frozen=True)
class Case:
    scheme: str
    secret: str
    other: str  # a second, rotated-in secret
    wrong: str
    sign: Callable[[str, bytes, int], dict[str, str]]  # (secret, body, unix time) -> headers
    signature_header: str
    event: str
    delivery: str | None
    body: bytes
    source_options: dict[str, str] = dataclasses.field(default_factory=dict)

    def source(self, *secrets: str) -> Source:
        return Source(name=f"src_{self.scheme}", scheme=self.scheme, secrets=secrets or (self.secret,),
                      **self.source_options)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return self.scheme


CASES = [
    Case("github", "gh-secret", "gh-rotated", "gh-wrong", lambda s, b, t: sign_github(s, b), "X-Hub-Signature-256",
         "push", "gh-delivery-1", b'{"ref":"refs/heads/main","after":"abc123"}'),
    Case("stripe", "whsec_stripe_secret", "whsec_stripe_rotated", "whsec_stripe_wrong", sign_stripe,
         "Stripe-Signature", "invoice.paid", "evt_123",
         b'{"id":"evt_123","object":"event","type":"invoice.paid","data":{"object":{"id":"in_1"}}}'),
    Case("standard", STANDARD_SECRET, STANDARD_OTHER, STANDARD_WRONG, sign_standard, "webhook-signature",
         "user.created", "msg_2a3b4c5d", b'{"type":"user.created","timestamp":"2024-01-01T00:00:00Z","data":{"id":1}}'),
    Case("slack", "slack-signing-secret", "slack-rotated", "slack-wrong", sign_slack, "X-Slack-Signature",
         "app_mention", "Ev0123",
         b'{"type":"event_callback","event_id":"Ev0123","event":{"type":"app_mention","text":"hi"}}'),
    Case("shopify", "shpss_secret", "shpss_rotated", "shpss_wrong", lambda s, b, t: sign_shopify(s, b),
         "X-Shopify-Hmac-Sha256", "orders.create", "shop-event-1", b'{"id":820982911946154508,"email":"a@b.c"}'),
    Case("hmac", "acme-secret", "acme-rotated", "acme-wrong", lambda s, b, t: sign_acme(s, b), "X-Acme-Signature",
         "widget.created", "acme-1", b'{"widget":{"id":7}}', ACME),
]
CASE_IDS = [c.scheme for c in CASES]
SIGNATURE_HEADERS = [c.signature_header for c in CASES]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_valid_delivery_verifies(case: Case) -> None:
    now = int(time.time())
    hit = accepted(case.source(), case.sign(case.secret, case.body, now), case.body, now=now)
    assert hit.event == case.event
    assert hit.delivery_id == case.delivery
    assert hit.body == json.loads(case.body)
    assert hit.reply is None
    kept = {name.lower() for name in hit.headers}
    assert not kept & {h.lower() for h in SIGNATURE_HEADERS}, f"signature headers kept: {hit.headers}"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_tampered_body_is_refused(case: Case) -> None:
    now = int(time.time())
    headers = case.sign(case.secret, case.body, now)
    tampered = case.body.replace(b"}", b',"x":1}', 1)
    assert json.loads(tampered) != json.loads(case.body)  # still valid JSON: only the signature can refuse it
    refused("invalid_signature", case.source(), headers, tampered, now=now)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_wrong_secret_is_refused(case: Case) -> None:
    now = int(time.time())
    refused("invalid_signature", case.source(), case.sign(case.wrong, case.body, now), case.body, now=now)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_missing_signature_header_is_refused(case: Case) -> None:
    now = int(time.time())
    headers = case.sign(case.secret, case.body, now)
    del headers[case.signature_header]
    refused("invalid_signature", case.source(), headers, case.body, now=now)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_no_headers_at_all_is_refused(case: Case) -> None:
    refused("invalid_signature", case.source(), {}, case.body)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_signature_header_in_any_case_is_found(case: Case) -> None:
    now = int(time.time())
    headers = {name.upper(): value for name, value in case.sign(case.secret, case.body, now).items()}
    assert accepted(case.source(), headers, case.body, now=now).event == case.event


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_rotation_accepts_either_secret(case: Case) -> None:
    now = int(time.time())
    source = case.source(case.secret, case.other)
    for secret in (case.secret, case.other):
        assert accepted(source, case.sign(secret, case.body, now), case.body, now=now).event == case.event
    refused("invalid_signature", source, case.sign(case.wrong, case.body, now), case.body, now=now)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_valid_signature_then_malformed_json_is_400(case: Case) -> None:
    now = int(time.time())
    body = b'{"type": "x", "broken": '
    exc = raises(BadRequest, lambda: accepted(case.source(), case.sign(case.secret, body, now), body, now=now))
    assert status_of(exc) == 400  # type: ignore[arg-type]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_valid_signature_then_unsupported_content_type_is_415(case: Case) -> None:
    now = int(time.time())
    raises(UnsupportedMediaType,
           lambda: accepted(case.source(), case.sign(case.secret, case.body, now), case.body, "text/plain", now=now))


# --------------------------------------------------------------------------- malformed signature headers

BODY = b'{"type":"thing.happened","id":"evt_9"}'


def _digest(secret: str, message: bytes, algorithm: str = "sha256") -> bytes:
    return hmac.new(secret.encode(), message, getattr(hashlib, algorithm)).digest()


MALFORMED: list[tuple[str, str, Callable[[int], str]]] = [
    # (scheme, what, header value built from the unix time)
    ("github", "garbage", lambda t: "garbage"),
    ("github", "empty", lambda t: ""),
    ("github", "prefix only", lambda t: "sha256="),
    ("github", "sha1 prefix, valid hex", lambda t: "sha1=" + hex_mac("gh-secret", BODY)),
    ("github", "no prefix, valid hex", lambda t: hex_mac("gh-secret", BODY)),
    ("github", "non-hex", lambda t: "sha256=" + "zz" * 32),
    ("github", "odd-length hex", lambda t: "sha256=" + hex_mac("gh-secret", BODY)[:-1]),
    ("github", "truncated digest", lambda t: "sha256=" + hex_mac("gh-secret", BODY)[:32]),
    ("github", "base64 instead of hex", lambda t: "sha256=" + b64_mac("gh-secret", BODY)),
    ("github", "non-ascii", lambda t: "sha256=\u00e9\u00e9"),
    ("stripe", "garbage", lambda t: "garbage"),
    ("stripe", "no v1", lambda t: f"t={t}"),
    ("stripe", "no t", lambda t: "v1=" + hex_mac("whsec_stripe_secret", f"{t}.".encode() + BODY)),
    ("stripe", "empty v1", lambda t: f"t={t},v1="),
    ("stripe", "non-hex v1", lambda t: f"t={t},v1={'zz' * 32}"),
    ("stripe", "v0 only", lambda t: f"t={t},v0=" + hex_mac("whsec_stripe_secret", f"{t}.".encode() + BODY)),
    ("stripe", "two timestamps",
     lambda t: f"t={t},t={t},v1=" + hex_mac("whsec_stripe_secret", f"{t}.".encode() + BODY)),
    ("stripe", "base64 v1", lambda t: f"t={t},v1=" + b64_mac("whsec_stripe_secret", f"{t}.".encode() + BODY)),
    ("standard", "garbage", lambda t: "garbage"),
    ("standard", "no comma", lambda t: "v1"),
    ("standard", "v2 only", lambda t: "v2," + sign_standard(STANDARD_SECRET, BODY, t)["webhook-signature"][3:]),
    ("standard", "non-base64", lambda t: "v1,!!!not*base64!!!"),
    ("standard", "bad padding", lambda t: "v1,abc"),
    ("standard", "hex instead of base64",
     lambda t: "v1," + base64.b64decode(sign_standard(STANDARD_SECRET, BODY, t)["webhook-signature"][3:]).hex()),
    ("standard", "too many commas", lambda t: "v1,a,b"),
    ("standard", "non-ascii", lambda t: "v1,\u00e9\u00e9\u00e9\u00e9"),
    ("slack", "garbage", lambda t: "garbage"),
    ("slack", "v1 prefix", lambda t: "v1=" + hex_mac("slack-signing-secret", f"v0:{t}:".encode() + BODY)),
    ("slack", "no prefix", lambda t: hex_mac("slack-signing-secret", f"v0:{t}:".encode() + BODY)),
    ("slack", "non-hex", lambda t: "v0=" + "zz" * 32),
    ("slack", "base64", lambda t: "v0=" + b64_mac("slack-signing-secret", f"v0:{t}:".encode() + BODY)),
    ("shopify", "garbage", lambda t: "garbage!"),
    ("shopify", "empty", lambda t: ""),
    ("shopify", "hex instead of base64", lambda t: hex_mac("shpss_secret", BODY)),
    ("shopify", "prefixed", lambda t: "sha256=" + b64_mac("shpss_secret", BODY)),
    ("shopify", "truncated", lambda t: b64_mac("shpss_secret", BODY)[:20]),
    ("shopify", "non-ascii", lambda t: "\u00e9\u00e9\u00e9\u00e9"),
    ("hmac", "garbage", lambda t: "garbage"),
    ("hmac", "no prefix", lambda t: hex_mac("acme-secret", BODY)),
    ("hmac", "wrong prefix", lambda t: "sha1=" + hex_mac("acme-secret", BODY)),
    ("hmac", "non-hex", lambda t: "sha256=" + "zz" * 32),
    ("hmac", "base64 instead of hex", lambda t: "sha256=" + b64_mac("acme-secret", BODY)),
]


@pytest.mark.parametrize("scheme, what, value", MALFORMED, ids=[f"{s}-{w}" for s, w, _ in MALFORMED])
def test_malformed_signature_header_is_refused(scheme: str, what: str, value: Callable[[int], str]) -> None:
    case = next(c for c in CASES if c.scheme == scheme)
    now = int(time.time())
    headers = case.sign(case.secret, BODY, now)
    assert accepted(case.source(), headers, BODY, now=now).body == json.loads(BODY)  # the control: valid as signed
    headers[case.signature_header] = value(now)
    refused("invalid_signature", case.source(), headers, BODY, now=now)


# --------------------------------------------------------------------------- timestamps

STRIPE = next(c for c in CASES if c.scheme == "stripe")
SLACK = next(c for c in CASES if c.scheme == "slack")
STANDARD = next(c for c in CASES if c.scheme == "standard")


@pytest.mark.parametrize("case", [STRIPE, SLACK], ids=["stripe", "slack"])
@pytest.mark.parametrize("offset_s, ok", [(-301, False), (301, False), (-3600, False), (86400, False),
                                           (-300, True), (300, True), (0, True)])
def test_timestamp_window(case: Case, offset_s: int, ok: bool) -> None:
    now = 1_700_000_000
    headers = case.sign(case.secret, case.body, now + offset_s)
    if ok:
        assert accepted(case.source(), headers, case.body, now=now).event == case.event
    else:
        refused("invalid_timestamp", case.source(), headers, case.body, now=now)


@pytest.mark.parametrize("case", [STRIPE, SLACK], ids=["stripe", "slack"])
def test_timestamp_window_follows_tolerance(case: Case) -> None:
    now = 1_700_000_000
    headers = case.sign(case.secret, case.body, now - 100)
    assert accepted(case.source(), headers, case.body, now=now, tolerance_s=120).event == case.event
    refused("invalid_timestamp", case.source(), headers, case.body, now=now, tolerance_s=60)


@pytest.mark.parametrize("case", [STRIPE, SLACK], ids=["stripe", "slack"])
def test_stale_delivery_with_bad_signature_says_signature(case: Case) -> None:
    """The timestamp verdict is given only for authentic deliveries."""
    now = 1_700_000_000
    refused("invalid_signature", case.source(), case.sign(case.wrong, case.body, now - 3600), case.body, now=now)


@pytest.mark.parametrize("case", [STRIPE, SLACK], ids=["stripe", "slack"])
@pytest.mark.parametrize("stamp", ["abc", "", "1.7e9", "17000000OO"])
def test_non_numeric_timestamp_is_invalid_timestamp(case: Case, stamp: str) -> None:
    headers = case.sign(case.secret, case.body, stamp)  # type: ignore[arg-type]
    refused("invalid_timestamp", case.source(), headers, case.body, now=1_700_000_000)


@pytest.mark.parametrize("offset_s, ok", [(-360, False), (360, False), (-86400, False), (-240, True), (240, True)])
def test_standard_timestamp_window(offset_s: int, ok: bool) -> None:
    """standardwebhooks checks the timestamp against the real clock (5 minutes each way)."""
    now = int(time.time())
    headers = sign_standard(STANDARD_SECRET, STANDARD.body, now + offset_s)
    if ok:
        assert accepted(STANDARD.source(), headers, STANDARD.body, now=now).event == "user.created"
    else:
        refused("invalid_timestamp", STANDARD.source(), headers, STANDARD.body, now=now)


@pytest.mark.parametrize("age_s, tolerance_s, ok", [(120, 60.0, False), (600, 900.0, True)])
def test_standard_honours_the_configured_tolerance(age_s: int, tolerance_s: float, ok: bool) -> None:
    """WEBHOOK_TOLERANCE_S (`tolerance_s`) bounds every timestamped scheme, Standard Webhooks too."""
    now = int(time.time())
    headers = sign_standard(STANDARD_SECRET, STANDARD.body, now - age_s)
    if ok:
        assert accepted(STANDARD.source(), headers, STANDARD.body, now=now, tolerance_s=tolerance_s).event
    else:
        refused("invalid_timestamp", STANDARD.source(), headers, STANDARD.body, now=now, tolerance_s=tolerance_s)


# --------------------------------------------------------------------------- published test vectors


def test_github_docs_vector() -> None:
    assert "sha256=" + hex_mac(GITHUB_DOC_SECRET, GITHUB_DOC_BODY) == GITHUB_DOC_SIGNATURE
    source = Source(name="github", scheme="github", secrets=(GITHUB_DOC_SECRET,))
    # the right signature gets past verification, then the non-JSON body is refused as a media type
    raises(UnsupportedMediaType, lambda: accepted(source, {"X-Hub-Signature-256": GITHUB_DOC_SIGNATURE},
                                                  GITHUB_DOC_BODY, "text/plain"))
    wrong = "sha256=" + hex_mac("It's a Secret to Nobody", GITHUB_DOC_BODY)
    refused("invalid_signature", source, {"X-Hub-Signature-256": wrong}, GITHUB_DOC_BODY, "text/plain")
    refused("invalid_signature", source, {"X-Hub-Signature-256": GITHUB_DOC_SIGNATURE}, b"Hello, World?",
            "text/plain")


def test_standard_webhooks_reference_vector() -> None:
    moment = dt.datetime.fromtimestamp(STANDARD_DOC_TS, dt.timezone.utc)
    webhook = standardwebhooks.Webhook(STANDARD_DOC_SECRET)
    assert webhook.sign(STANDARD_DOC_ID, moment, STANDARD_DOC_BODY.decode()) == STANDARD_DOC_SIGNATURE
    source = Source(name="std", scheme="standard", secrets=(STANDARD_DOC_SECRET,))
    published = {"webhook-id": STANDARD_DOC_ID, "webhook-timestamp": str(STANDARD_DOC_TS),
                 "webhook-signature": STANDARD_DOC_SIGNATURE}
    # the published delivery is years old by the real clock: refused as a replay
    refused("invalid_timestamp", source, published, STANDARD_DOC_BODY, now=time.time())
    # the same message signed now verifies
    fresh_at = dt.datetime.now(tz=dt.timezone.utc)
    fresh = {"webhook-id": STANDARD_DOC_ID, "webhook-timestamp": str(int(fresh_at.timestamp())),
             "webhook-signature": webhook.sign(STANDARD_DOC_ID, fresh_at, STANDARD_DOC_BODY.decode())}
    hit = accepted(source, fresh, STANDARD_DOC_BODY, now=time.time())
    assert hit.body == {"test": 2432232314}
    assert hit.delivery_id == STANDARD_DOC_ID
    assert hit.event == ""  # no "type" field
    assert hit.headers == {"webhook-id": STANDARD_DOC_ID, "webhook-timestamp": fresh["webhook-timestamp"]}
    # one byte different: refused
    refused("invalid_signature", source, fresh, b'{"test": 2432232315}', now=time.time())


def test_slack_docs_vector_is_a_slash_command() -> None:
    assert "v0=" + hex_mac(SLACK_DOC_SECRET, f"v0:{SLACK_DOC_TS}:".encode() + SLACK_DOC_BODY) == SLACK_DOC_SIGNATURE
    source = Source(name="slack", scheme="slack", secrets=(SLACK_DOC_SECRET,))
    headers = {"X-Slack-Signature": SLACK_DOC_SIGNATURE, "X-Slack-Request-Timestamp": str(SLACK_DOC_TS)}
    hit = accepted(source, headers, SLACK_DOC_BODY, FORM, now=SLACK_DOC_TS + 10)
    assert hit.event == "command"
    assert hit.delivery_id is None
    assert hit.reply is None
    assert hit.body["command"] == "/webhook-collect"
    assert hit.body["text"] == ""
    assert hit.body["user_name"] == "roadrunner"
    assert hit.body["response_url"] == "https://hooks.slack.com/commands/T1DC2JH3J/397700885554/96rGlfmibIGlgcZRskXaIFfN"
    assert hit.headers == {"X-Slack-Request-Timestamp": str(SLACK_DOC_TS)}
    refused("invalid_timestamp", source, headers, SLACK_DOC_BODY, FORM, now=SLACK_DOC_TS + 301)
    refused("invalid_signature", source, headers, SLACK_DOC_BODY.replace(b"foobar", b"foobaz"), FORM,
            now=SLACK_DOC_TS + 10)


# --------------------------------------------------------------------------- parsing and events


GITHUB = next(c for c in CASES if c.scheme == "github")


def test_github_json_form_payload_field() -> None:
    obj = {"action": "opened", "number": 7, "pull_request": {"title": "caf\u00e9 & \"quotes\" = +"}}
    body = urllib.parse.urlencode({"payload": json.dumps(obj)}).encode()
    hit = accepted(GITHUB.source(), sign_github("gh-secret", body, event="pull_request"), body, FORM)
    assert hit.body == obj
    assert hit.event == "pull_request"


def test_github_form_without_payload_field_is_its_fields() -> None:
    body = b"a=1&b=two+words&empty="
    hit = accepted(GITHUB.source(), sign_github("gh-secret", body), body, FORM)
    assert hit.body == {"a": "1", "b": "two words", "empty": ""}


def test_github_form_payload_that_is_not_json_is_400() -> None:
    body = b"payload=%7Bnot+json"
    raises(BadRequest, lambda: accepted(GITHUB.source(), sign_github("gh-secret", body), body, FORM))


def test_github_ping_is_answered_now() -> None:
    body = b'{"zen":"Keep it logically awesome.","hook_id":1}'
    hit = accepted(GITHUB.source(), sign_github("gh-secret", body, event="ping"), body)
    assert hit.reply == {"ok": True, "event": "ping"}
    assert hit.event == "ping"


def test_github_kept_headers() -> None:
    hit = accepted(GITHUB.source(), sign_github("gh-secret", GITHUB.body), GITHUB.body)
    assert hit.headers == {"X-GitHub-Event": "push", "X-GitHub-Delivery": "gh-delivery-1", "X-GitHub-Hook-ID": "4242",
                           "User-Agent": "GitHub-Hookshot/abc123"}


def test_github_without_delivery_header_has_no_delivery_id() -> None:
    hit = accepted(GITHUB.source(), sign_github("gh-secret", GITHUB.body, delivery=None), GITHUB.body)
    assert hit.delivery_id is None


@pytest.mark.parametrize("case", [c for c in CASES if c.scheme not in ("github", "slack")],
                         ids=[c.scheme for c in CASES if c.scheme not in ("github", "slack")])
def test_form_bodies_only_for_github_and_slack(case: Case) -> None:
    now = int(time.time())
    body = b"a=1"
    raises(UnsupportedMediaType, lambda: accepted(case.source(), case.sign(case.secret, body, now), body, FORM,
                                                  now=now))


def test_slack_url_verification_reply() -> None:
    body = (b'{"token":"Jhj5dZrVaK7ZwHHjRyZWjbDl","challenge":"3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P",'
            b'"type":"url_verification"}')
    hit = accepted(SLACK.source(), sign_slack("slack-signing-secret", body, int(time.time())), body)
    assert hit.reply == {"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}
    assert hit.event == "url_verification"


def test_slack_url_verification_needs_a_signature() -> None:
    body = b'{"challenge":"abc","type":"url_verification"}'
    refused("invalid_signature", SLACK.source(), sign_slack("slack-wrong", body, int(time.time())), body)


def test_slack_event_callback_event_type_and_id() -> None:
    body = json.dumps({"type": "event_callback", "event_id": "Ev08MFMKH6", "team_id": "T1",
                       "event": {"type": "reaction_added", "reaction": "thumbsup"}}).encode()
    now = int(time.time())
    headers = {**sign_slack("slack-signing-secret", body, now), "X-Slack-Retry-Num": "1",
               "X-Slack-Retry-Reason": "http_timeout"}
    hit = accepted(SLACK.source(), headers, body, now=now)
    assert hit.event == "reaction_added"
    assert hit.delivery_id == "Ev08MFMKH6"
    assert hit.headers == {"X-Slack-Request-Timestamp": str(now), "X-Slack-Retry-Num": "1",
                           "X-Slack-Retry-Reason": "http_timeout"}
    assert task_type("slack", hit.event) == "slack.reaction_added"


def test_slack_event_callback_without_inner_type() -> None:
    body = b'{"type":"event_callback","event_id":"Ev1","event":"not an object"}'
    hit = accepted(SLACK.source(), sign_slack("slack-signing-secret", body, int(time.time())), body)
    assert hit.event == "event_callback"


def test_slack_interactive_payload_form() -> None:
    obj = {"type": "block_actions", "user": {"id": "U1"}, "actions": [{"action_id": "approve"}]}
    body = urllib.parse.urlencode({"payload": json.dumps(obj)}).encode()
    hit = accepted(SLACK.source(), sign_slack("slack-signing-secret", body, int(time.time())), body, FORM)
    assert hit.body == obj
    assert hit.event == "block_actions"


def test_slack_malformed_form_is_400() -> None:
    for body in (b"a=%ff", b"a&b&&", b"\xff=1"):
        raises(BadRequest, lambda body=body: accepted(  # type: ignore[misc]
            SLACK.source(), sign_slack("slack-signing-secret", body, int(time.time())), body, FORM))


SHOPIFY = next(c for c in CASES if c.scheme == "shopify")


def test_shopify_topic_and_ids() -> None:
    body = SHOPIFY.body
    hit = accepted(SHOPIFY.source(), {**sign_shopify("shpss_secret", body, "orders/create"),
                                      "X-Shopify-API-Version": "2024-07"}, body)
    assert hit.event == "orders.create"
    assert task_type("shopify", hit.event) == "shopify.orders.create"
    assert hit.delivery_id == "shop-event-1"
    assert hit.headers == {"X-Shopify-Topic": "orders/create", "X-Shopify-Shop-Domain": "example.myshopify.com",
                           "X-Shopify-Event-Id": "shop-event-1", "X-Shopify-Webhook-Id": "shop-webhook-1",
                           "X-Shopify-API-Version": "2024-07"}
    older = accepted(SHOPIFY.source(), sign_shopify("shpss_secret", body, "app/uninstalled", event_id=None), body)
    assert older.event == "app.uninstalled"
    assert older.delivery_id == "shop-webhook-1"  # the webhook id when there is no event id


ACME_CASE = next(c for c in CASES if c.scheme == "hmac")


@pytest.mark.parametrize("algorithm", ["sha1", "sha256", "sha512"])
@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_generic_hmac_algorithms_and_encodings(algorithm: str, encoding: str) -> None:
    source = Source(name="acme", scheme="hmac", secrets=("acme-secret",), header="X-Sig", algorithm=algorithm,
                    encoding=encoding, prefix="")
    body = b'{"type":"widget.deleted"}'
    make = hex_mac if encoding == "hex" else b64_mac
    hit = accepted(source, {"X-Sig": make("acme-secret", body, algorithm)}, body)
    assert hit.event == "widget.deleted"  # no event header configured: the body's "type"
    assert hit.delivery_id is None
    assert hit.headers == {}
    other = "sha512" if algorithm != "sha512" else "sha1"
    refused("invalid_signature", source, {"X-Sig": make("acme-secret", body, other)}, body)
    other_encoding = b64_mac if encoding == "hex" else hex_mac
    refused("invalid_signature", source, {"X-Sig": other_encoding("acme-secret", body, algorithm)}, body)


def test_generic_hmac_event_and_id_headers() -> None:
    body = b'{"type":"ignored.because.header"}'
    hit = accepted(ACME_CASE.source(), sign_acme("acme-secret", body, event="widget/updated", delivery="d-77"), body)
    assert hit.event == "widget/updated"
    assert hit.delivery_id == "d-77"
    assert hit.headers == {"X-Acme-Event": "widget/updated", "X-Acme-Delivery": "d-77"}
    assert task_type("acme", hit.event) == "acme.widget.updated"


def test_stripe_event_type_and_id_from_body() -> None:
    now = int(time.time())
    hit = accepted(STRIPE.source(), sign_stripe("whsec_stripe_secret", STRIPE.body, now), STRIPE.body, now=now)
    assert (hit.event, hit.delivery_id, hit.headers) == ("invoice.paid", "evt_123", {})
    assert task_type("stripe", hit.event) == "stripe.invoice.paid"


def test_stripe_several_v1_signatures_any_may_match() -> None:
    """During a secret roll Stripe sends one v1 per active secret."""
    now = int(time.time())
    good = sign_stripe("whsec_stripe_secret", STRIPE.body, now)["Stripe-Signature"].split(",")[1]
    bad = "v1=" + hex_mac("whsec_other_account", f"{now}.".encode() + STRIPE.body)
    header = f"t={now},{bad},{good},v0=" + "00" * 32
    assert accepted(STRIPE.source(), {"Stripe-Signature": header}, STRIPE.body, now=now).event == "invoice.paid"


def test_standard_several_signatures_any_may_match() -> None:
    now = int(time.time())
    headers = sign_standard(STANDARD_SECRET, STANDARD.body, now)
    wrong = sign_standard(STANDARD_WRONG, STANDARD.body, now)["webhook-signature"]
    headers["webhook-signature"] = f"{wrong} {headers['webhook-signature']}"
    assert accepted(STANDARD.source(), headers, STANDARD.body, now=now).delivery_id == "msg_2a3b4c5d"


# --------------------------------------------------------------------------- task_type


@pytest.mark.parametrize("source, event, expected", [
    ("stripe", "invoice.paid", "stripe.invoice.paid"),
    ("github", "push", "github.push"),
    ("shopify", "orders.create", "shopify.orders.create"),
    ("acme", "a/b c*d?e", "acme.a.b.c.d.e"),
    ("acme", "caf\u00e9", "acme.caf."),
    ("acme", "ok_-.:Z9", "acme.ok_-.:Z9"),
    ("stripe", "", "stripe.unknown"),
])
def test_task_type(source: str, event: str, expected: str) -> None:
    assert task_type(source, event) == expected
    assert NAME_RE.fullmatch(expected)


def test_task_type_is_always_a_valid_name() -> None:
    name = task_type("acme", "x" * 500 + "\n\x00")
    assert NAME_RE.fullmatch(name)
    assert name.startswith("acme.xxx")


# --------------------------------------------------------------------------- sources_from_env


def test_sources_from_env_reads_every_setting(tmp_path: Path) -> None:
    secret_file = tmp_path / "slack.secret"
    secret_file.write_text("slack-one\nslack-two\n", "utf-8")
    env = {
        "WEBHOOK_SOURCES": " GitHub, stripe ,slack,acme,",
        "WEBHOOK_GITHUB_SECRET": "gh-old, gh-new",
        "WEBHOOK_GITHUB_QUEUE": "hooks.github",
        "WEBHOOK_STRIPE_SECRET": "whsec_abc",
        "WEBHOOK_SLACK_SECRET_FILE": str(secret_file),
        "WEBHOOK_ACME_SCHEME": "HMAC",
        "WEBHOOK_ACME_SECRET": "acme-secret",
        "WEBHOOK_ACME_HEADER": "X-Acme-Signature",
        "WEBHOOK_ACME_ALGORITHM": "SHA512",
        "WEBHOOK_ACME_ENCODING": "base64",
        "WEBHOOK_ACME_PREFIX": "sha512=",
        "WEBHOOK_ACME_EVENT_HEADER": "X-Acme-Event",
        "WEBHOOK_ACME_ID_HEADER": "X-Acme-Delivery",
    }
    sources = {s.name: s for s in sources_from_env(env)}
    assert list(sources) == ["github", "stripe", "slack", "acme"]
    assert sources["github"].scheme == "github"
    assert sources["github"].secrets == ("gh-old", "gh-new")
    assert sources["github"].queue == "hooks.github"
    assert sources["stripe"].queue == "default"
    assert sources["slack"].secrets == ("slack-one", "slack-two")
    acme = sources["acme"]
    assert (acme.scheme, acme.header, acme.algorithm, acme.encoding, acme.prefix, acme.event_header,
            acme.id_header) == ("hmac", "X-Acme-Signature", "sha512", "base64", "sha512=", "X-Acme-Event",
                                "X-Acme-Delivery")
    for source in sources.values():
        for secret in source.secrets:
            assert secret not in repr(source)


def test_secret_file_rotation_verifies_with_either(tmp_path: Path) -> None:
    secret_file = tmp_path / "gh.secret"
    secret_file.write_text("gh-one,gh-two\n", "utf-8")
    (source,) = sources_from_env({"WEBHOOK_SOURCES": "github", "WEBHOOK_GITHUB_SECRET_FILE": str(secret_file),
                                  "WEBHOOK_GITHUB_SECRET": "ignored-when-a-file-is-given"})
    assert source.secrets == ("gh-one", "gh-two")
    for secret in ("gh-one", "gh-two"):
        assert accepted(source, sign_github(secret, GITHUB.body), GITHUB.body).event == "push"
    refused("invalid_signature", source, sign_github("ignored-when-a-file-is-given", GITHUB.body), GITHUB.body)


def test_no_sources_configured() -> None:
    assert sources_from_env({}) == ()
    assert sources_from_env({"WEBHOOK_SOURCES": " , "}) == ()


@pytest.mark.parametrize("env, mentions", [
    ({"WEBHOOK_SOURCES": "github"}, "github"),
    ({"WEBHOOK_SOURCES": "github", "WEBHOOK_GITHUB_SECRET": " , ,"}, "github"),
    ({"WEBHOOK_SOURCES": "github,stripe", "WEBHOOK_GITHUB_SECRET": "x"}, "stripe"),
    ({"WEBHOOK_SOURCES": "acme", "WEBHOOK_ACME_SECRET": "x"}, "WEBHOOK_ACME_SCHEME"),
    ({"WEBHOOK_SOURCES": "acme", "WEBHOOK_ACME_SECRET": "x", "WEBHOOK_ACME_SCHEME": "rot13"}, "WEBHOOK_ACME_SCHEME"),
    ({"WEBHOOK_SOURCES": "github", "WEBHOOK_GITHUB_SECRET": "x", "WEBHOOK_GITHUB_QUEUE": "bad queue"},
     "WEBHOOK_GITHUB_QUEUE"),
    ({"WEBHOOK_SOURCES": "acme", "WEBHOOK_ACME_SCHEME": "hmac", "WEBHOOK_ACME_SECRET": "x",
      "WEBHOOK_ACME_ALGORITHM": "md5"}, "WEBHOOK_ACME_ALGORITHM"),
    ({"WEBHOOK_SOURCES": "acme", "WEBHOOK_ACME_SCHEME": "hmac", "WEBHOOK_ACME_SECRET": "x",
      "WEBHOOK_ACME_ENCODING": "base32"}, "WEBHOOK_ACME_ENCODING"),
    ({"WEBHOOK_SOURCES": "standard", "WEBHOOK_STANDARD_SECRET": "whsec_"}, "WEBHOOK_STANDARD_SECRET"),
    ({"WEBHOOK_SOURCES": "bad-name!", "WEBHOOK_BAD-NAME!_SECRET": "x"}, "bad-name!"),
])
def test_bad_source_configuration_is_a_config_error(env: dict[str, str], mentions: str) -> None:
    exc = raises(ConfigError, lambda: sources_from_env(env))
    assert mentions in str(exc)


def test_unreadable_secret_file_is_a_config_error(tmp_path: Path) -> None:
    exc = raises(ConfigError, lambda: sources_from_env({"WEBHOOK_SOURCES": "github",
                                                        "WEBHOOK_GITHUB_SECRET_FILE": str(tmp_path / "missing")}))
    assert "WEBHOOK_GITHUB_SECRET_FILE" in str(exc)


def test_config_errors_never_echo_secrets() -> None:
    secret = "whsec_" + "%" * 12  # decodes to nothing: refused as a Standard Webhooks secret
    exc = raises(ConfigError, lambda: sources_from_env({"WEBHOOK_SOURCES": "standard",
                                                        "WEBHOOK_STANDARD_SECRET": secret}))
    assert secret not in str(exc) and "%%%" not in str(exc)


def test_every_scheme_is_covered() -> None:
    assert {c.scheme for c in CASES} == set(webhooks.SCHEMES)
