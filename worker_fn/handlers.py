"""Example handlers. Copy this module, register your own task types on a `Registry`
named `registry`, and point the worker at it with `HANDLERS=yourpackage.yourmodule`.

A handler gets the task's JSON payload and a `Context` (id, type, queue, attempt,
max_attempts, deadline) and returns a JSON-serialisable result. Raising an exception
fails the attempt: it is retried with backoff until `max_attempts`, then dead-lettered.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from taskbus import Context, Registry

log = logging.getLogger(__name__)
registry = Registry()


@registry.register("default")
def default(payload: Any, ctx: Context) -> Any:
    """What the blog design's worker did: note that the task was processed, return its payload."""
    log.info("processed task", extra={"fields": {"task_id": ctx.id}})
    return payload


@registry.register("echo")
def echo(payload: Any, ctx: Context) -> Any:
    return payload


@registry.register("sleep")
def sleep(payload: Any, ctx: Context) -> Any:
    """Sleep `payload["seconds"]` seconds: a stand-in for slow work."""
    seconds = float(payload.get("seconds", 1)) if isinstance(payload, dict) else 1.0
    time.sleep(seconds)
    return {"slept_s": seconds}


@registry.register("fail")
def fail(payload: Any, ctx: Context) -> Any:
    """Raise until attempt `succeed_on_attempt` (if given), else always."""
    succeed_on = payload.get("succeed_on_attempt") if isinstance(payload, dict) else None
    if succeed_on is not None and ctx.attempt >= int(succeed_on):
        return {"succeeded_on_attempt": ctx.attempt}
    raise RuntimeError(f"failing on purpose (attempt {ctx.attempt})")


# -- webhook handlers: task types are `<source>.<event>`; a `.*` registration takes every
# event of a source that has no more specific handler. Payload: {"body", "webhook"}.


def _summary(payload: Any, text: str) -> dict[str, Any]:
    hook = payload.get("webhook", {}) if isinstance(payload, dict) else {}
    summary = {"source": hook.get("source"), "event": hook.get("event"), "summary": text}
    log.info("webhook: %s", text, extra={"fields": {"source": summary["source"], "event": summary["event"]}})
    return summary


def _body(payload: Any) -> dict[str, Any]:
    body = payload.get("body") if isinstance(payload, dict) else None
    return body if isinstance(body, dict) else {}


@registry.register("github.push")
def github_push(payload: Any, ctx: Context) -> Any:
    """Summarise a push; a tag or branch deletion has `commits: []` and `head_commit: null`."""
    body = _body(payload)
    ref = body.get("ref") if isinstance(body.get("ref"), str) else "?"
    commits = body.get("commits") if isinstance(body.get("commits"), list) else []
    repo = body.get("repository", {}).get("full_name", "?") if isinstance(body.get("repository"), dict) else "?"
    if body.get("deleted") or body.get("head_commit") is None and not commits:
        text = f"{repo}: {ref} deleted"
    else:
        text = f"{repo}: {len(commits)} commit(s) pushed to {ref}"
    return {**_summary(payload, text), "ref": ref, "commits": len(commits)}


@registry.register("github.*")
def github_other(payload: Any, ctx: Context) -> Any:
    action = _body(payload).get("action")
    return _summary(payload, f"GitHub {ctx.type.removeprefix('github.')}" + (f" ({action})" if action else ""))


@registry.register("stripe.*")
def stripe_event(payload: Any, ctx: Context) -> Any:
    return _summary(payload, f"Stripe {_body(payload).get('type')} {_body(payload).get('id')}")


@registry.register("standard.*")
def standard_event(payload: Any, ctx: Context) -> Any:
    return _summary(payload, f"Standard Webhooks event {_body(payload).get('type')}")


@registry.register("slack.*")
def slack_event(payload: Any, ctx: Context) -> Any:
    body = _body(payload)
    inner = body.get("event") if isinstance(body.get("event"), dict) else {}
    what = body.get("command") or inner.get("type") or body.get("type") or ctx.type
    return _summary(payload, f"Slack {what}")


@registry.register("shopify.*")
def shopify_event(payload: Any, ctx: Context) -> Any:
    hook = payload.get("webhook", {}) if isinstance(payload, dict) else {}
    topic = hook.get("headers", {}).get("X-Shopify-Topic", ctx.type)
    return _summary(payload, f"Shopify {topic} {_body(payload).get('id', '')}".strip())
