"""Handlers the tests run: the examples plus ones that count executions, block or crash."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import redis

from taskbus import Context, PermanentError
from worker_fn.handlers import registry

_client = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True, socket_timeout=5)


@registry.register("record")
def record(payload: Any, ctx: Context) -> Any:
    """Count each execution in `<payload.key>` (a Redis hash: task id -> executions), after
    sleeping `payload.seconds`; the count is the oracle for at-most/at-least-once checks."""
    time.sleep(float(payload.get("seconds", 0)))
    _client.hincrby(payload["key"], ctx.id, 1)
    return {"attempt": ctx.attempt}


@registry.register("crash")
def crash(payload: Any, ctx: Context) -> Any:
    """Kill the whole worker process, as a segfaulting C extension would."""
    _client.hincrby(payload["key"], ctx.id, 1)
    os._exit(3)


@registry.register("hang")
def hang(payload: Any, ctx: Context) -> Any:
    time.sleep(3600)


@registry.register("garbage")
def garbage(payload: Any, ctx: Context) -> Any:
    return object()  # not JSON


@registry.register("prefix.*")
def prefixed(payload: Any, ctx: Context) -> Any:
    return {"type": ctx.type}


@registry.register("flaky3", max_attempts=3, timeout_s=7.5)
def flaky3(payload: Any, ctx: Context) -> Any:
    """Always fails: its own defaults (3 attempts, 7.5 s) apply when the request gives none."""
    raise RuntimeError(f"flaky attempt {ctx.attempt} of {ctx.max_attempts}")


@registry.register("permanent")
def permanent(payload: Any, ctx: Context) -> Any:
    _client.hincrby(payload["key"], ctx.id, 1)
    raise PermanentError("the input can never work")


@registry.register("too_big")
def too_big(payload: Any, ctx: Context) -> Any:
    _client.hincrby(payload["key"], ctx.id, 1)
    return "x" * (2 * 1024 * 1024)


@registry.register("until_cancelled")
def until_cancelled(payload: Any, ctx: Context) -> Any:
    """Marks `<payload.key>[id]` = running, then waits for a cancel request (up to
    `payload.seconds`) and stops cooperatively with `ctx.raise_if_cancelled()`."""
    _client.hset(payload["key"], ctx.id, "running")
    ctx.cancelled.wait(float(payload.get("seconds", 30)))
    ctx.raise_if_cancelled()
    return {"cancelled": False}


@registry.register("ignores_cancel")
def ignores_cancel(payload: Any, ctx: Context) -> Any:
    """Marks `<payload.key>[id]` = running, then sleeps `payload.seconds` whatever happens."""
    _client.hset(payload["key"], ctx.id, "running")
    time.sleep(float(payload.get("seconds", 30)))
    return {"ignored": True}


@registry.register("traced")
def traced(payload: Any, ctx: Context) -> Any:
    """Opens a span of its own with the OpenTelemetry API (a child of the attempt's `process`
    span while tracing is on) and logs a line inside it (the worker adds the task's fields)."""
    from opentelemetry import trace

    with trace.get_tracer("tests.handlers").start_as_current_span("handler work"):
        logging.getLogger("tests.handlers").info("inside the handler's span")
    return {"traced": ctx.attempt}
