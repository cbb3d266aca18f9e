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
    log.info("processed task", extra={"task_id": ctx.id})
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
