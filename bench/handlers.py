"""Bench handlers: `HANDLERS=bench.handlers python -m worker_fn`.

`incr` does the per-task work every peer does too: one INCR on a bench counter key, so a
drain can be checked (counter == tasks) and compared like for like. `permanent` and `block`
give the console section its dead letters and its running tasks.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis

from taskbus import Context, PermanentError, Registry

COUNTER = "bench:count"
RELEASE = "bench:console:release"  # `block` tasks each pop one item of this list to end

registry = Registry()
_client: redis.Redis | None = None
_lock = threading.Lock()


def client() -> redis.Redis:
    global _client
    if _client is None:
        with _lock:
            if _client is None:
                _client = redis.Redis.from_url(os.environ["REDIS_URL"])
    return _client


@registry.register("incr")
def incr(payload: Any, ctx: Context) -> None:
    client().incr(COUNTER)


@registry.register("echo")
def echo(payload: Any, ctx: Context) -> Any:
    return payload


@registry.register("sleep")
def sleep(payload: Any, ctx: Context) -> Any:
    """Sleep `payload["seconds"]`: keeps a task running while a status long-poll is waiting."""
    time.sleep(float(payload.get("seconds", 0.05)) if isinstance(payload, dict) else 0.05)
    return None


@registry.register("permanent")
def permanent(payload: Any, ctx: Context) -> None:
    """Fails at once without a retry: a real dead letter (error, traceback, history) per task."""
    raise PermanentError("bench: a dead letter for the console section")


@registry.register("block")
def block(payload: Any, ctx: Context) -> None:
    """Runs until one item is pushed to RELEASE (or `payload["seconds"]`, 600 by default): a
    running task that costs nothing while it waits (a blocked BLPOP, no polling). Its own client:
    redis-py's default 5 s socket timeout would end the BLPOP first."""
    seconds = float(payload.get("seconds", 600)) if isinstance(payload, dict) else 600.0
    with redis.Redis.from_url(os.environ["REDIS_URL"], socket_timeout=seconds + 10) as blocking:
        blocking.blpop([RELEASE], timeout=seconds)
