"""The shared test handlers plus limited types for tests/contract/test_limits.py. Each limited
handler records its start and end in Redis under `<payload.mark>`: `:starts` (a list of
"tenant|id|attempt|overlap|server ms", overlap being how many of the tenant's runs were in
progress, this one included) and `:ends` ("tenant|id|attempt|server ms"); sleeps
`payload.first_s` on its first attempt (a run to SIGKILL) and `payload.seconds` otherwise, or,
with `payload.hold`, until an item is pushed to that list (30 s at most). With
`payload.fail_first`, its first attempt then fails (a retry)."""

from __future__ import annotations

import os
import time
from typing import Any

import redis

from taskbus import Context
from tests.handlers import registry

_client = redis.Redis.from_url(os.environ["REDIS_URL"], decode_responses=True, socket_timeout=5)

# INCR the tenant's in-progress count and record the start with the server's clock, atomically.
_START = _client.register_script("""
local n = redis.call('INCR', KEYS[1])
local t = redis.call('TIME')
redis.call('RPUSH', KEYS[2], ARGV[1] .. '|' .. n .. '|' .. (t[1] * 1000 + math.floor(t[2] / 1000)))
return n
""")
_END = _client.register_script("""
redis.call('DECR', KEYS[1])
local t = redis.call('TIME')
redis.call('RPUSH', KEYS[2], ARGV[1] .. '|' .. (t[1] * 1000 + math.floor(t[2] / 1000)))
""")


def _recorded(payload: Any, ctx: Context) -> Any:
    mark, tenant = payload["mark"], str(payload.get("tenant", ""))
    who = f"{tenant}|{ctx.id}|{ctx.attempt}"
    _START(keys=[f"{mark}:cur:{tenant}", f"{mark}:starts"], args=[who])
    first_s = payload.get("first_s")
    if payload.get("hold"):
        _client.blpop([payload["hold"]], timeout=30)
    else:
        time.sleep(float(first_s if first_s and ctx.attempt == 1 else payload.get("seconds", 0)))
    _END(keys=[f"{mark}:cur:{tenant}", f"{mark}:ends"], args=[who])
    if payload.get("fail_first") and ctx.attempt == 1:
        raise RuntimeError("first attempt fails")
    return {"attempt": ctx.attempt}


registry.register("lim.two", concurrency=2, concurrency_key="tenant")(_recorded)
registry.register("lim.one", concurrency=1, concurrency_key="tenant")(_recorded)
registry.register("lim.rate", rate="20/s")(_recorded)

__all__ = ["registry"]
