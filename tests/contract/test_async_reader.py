"""The ASGI status path's reader on a Valkey of its own (so its command counts are its alone):
a burst of long-polls costs a few Redis commands, not a few per client."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
from collections.abc import Callable

import redis

from local.embedded import EmbeddedServer
from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.state.async_reader import AsyncStatusReader
from taskbus.task import new_id


def calls(r: redis.Redis, command: str) -> int:
    return int(r.info("commandstats").get(f"cmdstat_{command}", {}).get("calls", 0))


def test_a_burst_of_long_polls_is_subscribed_in_one_command_and_each_wakes(
        base_settings: Settings, fresh_valkey: Callable[..., EmbeddedServer]) -> None:
    """500 long-polls started in the same loop turn: one SSUBSCRIBE for all their channels, one
    HGETALL each once subscribed (none before), every one wakes with its finished task, and
    every channel is unsubscribed once its long-poll has answered."""
    server = fresh_valkey(appendonly=False)
    settings = dataclasses.replace(base_settings, redis_url=server.url)
    keys = Keys(settings.key_prefix)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    ids = [new_id("q") for _ in range(500)]
    for task_id in ids:
        r.hset(keys.task(task_id), mapping={"id": task_id, "status": "running"})

    async def burst() -> tuple[list[dict[str, str] | None], int, int, int]:
        reader = AsyncStatusReader(settings)
        waits = [asyncio.ensure_future(reader.wait(task_id, 20)) for task_id in ids]
        while len(r.pubsub_shardchannels("*events*")) < len(ids) or calls(r, "hgetall") < len(ids):
            await asyncio.sleep(0.02)
        subscribes, reads = calls(r, "ssubscribe"), calls(r, "hgetall")
        for task_id in ids:
            r.hset(keys.task(task_id), "status", "succeeded")
            r.spublish(keys.events(task_id), "succeeded")
        records = await asyncio.wait_for(asyncio.gather(*waits), 20)
        deadline = asyncio.get_running_loop().time() + 10
        while r.pubsub_shardchannels("*events*") and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)  # each answered long-poll unsubscribes after its answer
        left = len(r.pubsub_shardchannels("*events*"))
        await reader.close()
        return records, subscribes, reads, left

    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # a runner's Playwright owns this thread's loop
        records, subscribes, reads, left = pool.submit(asyncio.run, burst()).result()
    assert [record["status"] if record else None for record in records] == ["succeeded"] * len(ids)
    assert subscribes == 1
    assert reads == len(ids)
    assert left == 0
    r.close()
