"""Bench handlers: `HANDLERS=bench.handlers python -m worker_fn`.

`incr` does the per-task work every peer does too: one INCR on a bench counter key, so a
drain can be checked (counter == tasks) and compared like for like.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

import redis

from taskbus import Context, Registry

COUNTER = "bench:count"

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
