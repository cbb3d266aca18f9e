"""Handlers for the chaos suite. Every execution is recorded outside Redis (an append-only
file per worker process), so the oracle survives Redis faults: `S <id> <ms>` when an attempt
starts, `E <id> <ms>` when the handler has finished its work."""

from __future__ import annotations

import os
import time
from typing import Any

from taskbus import Context, Registry

registry = Registry()
_log = open(os.path.join(os.environ["CHAOS_DIR"], f"exec-{os.getpid()}.log"), "a", buffering=1)


def _mark(kind: str, ctx: Context) -> None:
    _log.write(f"{kind} {ctx.id} {int(time.time() * 1000)}\n")


@registry.register("work")
@registry.register("stripe.*")
def work(payload: Any, ctx: Context) -> Any:
    _mark("S", ctx)
    time.sleep(float(payload.get("ms", 0)) / 1000)
    _mark("E", ctx)
    return {"attempt": ctx.attempt}


@registry.register("poison.exit")
def poison_exit(payload: Any, ctx: Context) -> Any:
    _mark("S", ctx)
    os._exit(7)


@registry.register("poison.hang")
def poison_hang(payload: Any, ctx: Context) -> Any:
    _mark("S", ctx)
    time.sleep(3600)
