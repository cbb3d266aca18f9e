"""The shared test handlers plus `note`, which records the order attempts start in: it appends
`<task id>:<attempt>` to the Redis list `<payload.key>` first, then (optionally) fails its first
attempt, hangs in it (for a SIGKILL), or sleeps `payload.seconds`."""

from __future__ import annotations

import time
from typing import Any

from taskbus import Context
from tests.handlers import _client, registry


@registry.register("note")
def note(payload: Any, ctx: Context) -> Any:
    _client.rpush(payload["key"], f"{ctx.id}:{ctx.attempt}")
    if ctx.attempt == 1 and payload.get("fail_first"):
        raise RuntimeError("first attempt fails, as asked")
    if ctx.attempt == 1 and payload.get("hang_first"):
        time.sleep(3600)
    time.sleep(float(payload.get("seconds", 0)))
    return {"attempt": ctx.attempt}


__all__ = ["registry"]
