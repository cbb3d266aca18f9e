"""Section 5, memory: Redis `used_memory` (what the allocator reports in use, not RSS) with N tasks
queued, N finished, and once their RESULT_TTL_S has passed, against the state before any task."""

from __future__ import annotations

import time
from typing import Any

import redis

from bench.config import MEMORY_BATCH, QUEUE, Config
from bench.metrics import Metrics
from bench.procs import Proc, wait_for
from bench.stack import KEYS, Stack, Store, load_scripts
from taskbus.settings import Settings
from taskbus.task import TaskSpec


def run_memory(stack: Stack, cfg: Config, m: Metrics) -> None:
    """On a fresh Valkey of its own: baseline (work stream and consumer group created by starting a
    worker once, scripts loaded, no client but the bench's), with N tasks queued, with N tasks
    finished (workers stopped), and once the finished tasks' RESULT_TTL_S has passed."""
    n, ttl = cfg.memory_tasks, cfg.memory_ttl_s
    server = stack.own_valkey("valkey-memory", appendonly=False)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    try:
        settings = stack.settings(redis_url=server.url, result_ttl_s=ttl, concurrency=32)
        section = MemorySection(stack, r, server.url, settings, n, ttl)
        section.baseline()
        ids = section.fill()
        t_done = section.drain(m, ids)
        section.expire(m, t_done)
        section.record(m, section.consumers() - 1)
    finally:
        r.close()
        server.stop()


class MemorySection:
    """The memory section's phases, in order, on its own Valkey; `readings` holds `INFO memory`
    at each state (baseline, queued, finished, after_ttl, after_ttl_reset)."""

    def __init__(self, stack: Stack, r: redis.Redis, url: str, settings: Settings, n: int, ttl: int) -> None:
        self.stack, self.r, self.url, self.settings = stack, r, url, settings
        self.n, self.ttl = n, ttl
        self.stream, self.group = KEYS.stream(QUEUE), settings.consumer_group
        self.readings: dict[str, dict[str, Any]] = {}
        self.base_keys = self.held = self.left = 0
        self.drain_s = self.gone_s = 0.0
        self.statuses: dict[str, int] = {}

    def consumers(self) -> int:
        groups = self.r.xinfo_groups(self.stream) if self.r.exists(self.stream) else []
        return sum(int(g["consumers"]) for g in groups if g["name"] == self.group)

    def baseline(self) -> None:
        """The state every deployment has before its first task: stream + group, scripts loaded."""
        first = self.stack.worker("taskbus-worker-memory-setup", self.settings)
        try:
            wait_for(lambda: self.consumers() >= 1, 30, "the first worker to create the consumer group", first)
        finally:
            first.stop()
        load_scripts(self.r)
        self.base_keys = self.r.dbsize()
        baseline = self.readings["baseline"] = settled_memory(self.r, reset=True)
        print(f"  baseline: used_memory {baseline['used_memory']:,} B, {self.base_keys} key(s)", flush=True)

    def fill(self) -> list[str]:
        """Queue N echo tasks by Store.enqueue_many; returns their ids."""
        n, batch, r = self.n, MEMORY_BATCH, self.r
        store = Store(self.settings)
        spec = TaskSpec(type="echo", payload={"n": 1}, queue=QUEUE)
        ids: list[str] = []
        t = time.perf_counter()
        for i in range(0, n, batch):
            ids += [task_id for task_id, _, _ in store.enqueue_many([(spec, None)] * min(batch, n - i))]
        enqueue_s = time.perf_counter() - t
        store.client.connection_pool.disconnect()  # its big query buffers must not count
        if r.xlen(self.stream) != n or r.dbsize() != self.base_keys + n:
            raise RuntimeError(f"after enqueue: {r.xlen(self.stream)} stream entries, {r.dbsize()} keys (want {n})")
        queued = self.readings["queued"] = settled_memory(r, reset=True)
        print(
            f"  {n:,} queued ({n // batch} enqueue_many calls of {batch}, {n / enqueue_s:,.0f} tasks/s): "
            f"used_memory {queued['used_memory']:,} B",
            flush=True,
        )
        return ids

    def drain(self, m: Metrics, ids: list[str]) -> float:
        """Drain by 2 workers, stopped before the reading; returns when the drain ended (monotonic).
        The earliest finished tasks start expiring RESULT_TTL_S after they finish."""
        n, r = self.n, self.r
        t_workers = time.monotonic()
        workers = self.stack.workers_with(self.settings, 2, "memory")
        try:
            wait_for(lambda: self.drained(workers), max(120.0, n / 500), f"{n:,} memory tasks to finish", interval=0.1)
            self.drain_s = time.monotonic() - t_workers
            t_done = time.monotonic()
        finally:
            for w in workers:
                w.stop()
        self.held = r.dbsize() - self.base_keys
        finished = self.readings["finished"] = settled_memory(r, settle_s=0.5, reset=True)
        self.statuses = statuses = memory_statuses(self.url, ids)
        print(
            f"  {n:,} finished in {self.drain_s:.1f} s (2 workers × CONCURRENCY 32): used_memory "
            f"{finished['used_memory']:,} B, {self.held:,} task keys held; statuses {statuses}",
            flush=True,
        )
        if self.held != n:
            m.errors.append(
                f"memory: only {self.held:,} of {n:,} finished tasks were still held at the reading (the drain took "
                f"{self.drain_s:.0f} s, RESULT_TTL_S={self.ttl}): raise --memory-ttl"
            )
        dead = KEYS.dead(QUEUE)
        if statuses.get("succeeded", 0) + statuses.get("expired", 0) != n or r.exists(dead):
            m.errors.append(f"memory: task statuses after the drain: {statuses}, dead letters: {r.xlen(dead)}")
        return t_done

    def drained(self, workers: list[Proc]) -> bool:
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"{w.name} exited ({w.popen.returncode}):\n{w.tail()}")
        r, stream, delayed = self.r, self.stream, KEYS.delayed(QUEUE)
        return r.xlen(stream) == 0 and r.xpending(stream, self.group)["pending"] == 0 and not r.zcard(delayed)

    def expire(self, m: Metrics, t_done: float) -> None:
        """Wait for Valkey's active expire cycle to remove the finished tasks, nobody reading them;
        read once raw, once with the statistics reset like every other reading."""
        ttl, r, base = self.ttl, self.r, self.readings["baseline"]["used_memory"]
        limit = ttl + 30 - (time.monotonic() - t_done)
        print(f"  waiting for RESULT_TTL_S={ttl} s to pass (up to {limit:.0f} s) ...", flush=True)
        try:
            wait_for(lambda: r.dbsize() <= self.base_keys, limit, "the finished tasks to expire", interval=0.5)
        except RuntimeError:
            m.errors.append(f"memory: {r.dbsize() - self.base_keys:,} task keys left {ttl + 30} s after the drain")
        self.gone_s = time.monotonic() - t_done
        after = self.readings["after_ttl"] = settled_memory(r, settle_s=2.0, limit_s=15.0)
        self.left = r.dbsize() - self.base_keys
        print(
            f"  {self.left} task keys left {self.gone_s:.1f} s after the drain: used_memory "
            f"{after['used_memory']:,} B ({after['used_memory'] - base:+,} B vs baseline)",
            flush=True,
        )
        # Server statistics, bounded and not per task, also hold used_memory: the slow log (its
        # last 128 entries, each batched EVALSHA over 10 ms with up to 32 arguments) and one
        # latency histogram (~16 KB) per command name first called since the last reset. Every
        # other reading is taken with both reset; this one is shown raw too.
        reset = self.readings["after_ttl_reset"] = settled_memory(r, settle_s=1.0, reset=True)
        print(
            f"  after SLOWLOG RESET + CONFIG RESETSTAT: used_memory "
            f"{reset['used_memory']:,} B ({reset['used_memory'] - base:+,} B vs baseline)",
            flush=True,
        )

    def record(self, m: Metrics, extra_consumers: int) -> None:
        """Every figure of the section into the metrics, the raw readings into its detail."""
        n, ttl, readings = self.n, self.ttl, self.readings
        base = readings["baseline"]["used_memory"]
        m.add("memory/tasks", n, "tasks")
        m.add("memory/result_ttl_s", ttl, "s")
        m.add("memory/drain_s", self.drain_s, "s")
        m.add("memory/expired_after_s", self.gone_s, "s")
        m.add("memory/held_at_peak", self.held, "tasks")
        m.add("memory/keys_left", self.left, "keys")
        for name, reading in readings.items():
            m.add(f"memory/{name}", reading["used_memory"], "bytes")
            m.add(f"memory/{name}/rss", reading["used_memory_rss"], "bytes")
        for name in ("queued", "finished"):
            m.add(f"memory/{name}/per_task", (readings[name]["used_memory"] - base) / n, "bytes/task")
        m.add("memory/after_ttl/delta", readings["after_ttl"]["used_memory"] - base, "bytes")
        m.add("memory/after_ttl_reset/delta", readings["after_ttl_reset"]["used_memory"] - base, "bytes")
        slow = sum(readings[x]["slowlog_len"] for x in ("queued", "finished", "after_ttl"))
        m.add("memory/slowlog_len", slow, "entries")
        m.detail["memory/info"] = [dict(readings)]
        m.detail["memory/statuses"] = [self.statuses]
        m.notes.append(
            f"memory: RESULT_TTL_S={ttl} s for the memory section only, so the test is quick (default: 1 day); "
            f"its Valkey is a fresh one of its own; worker starts left {extra_consumers} more consumer(s) in the "
            "group (a few hundred bytes each, never expired)"
        )


def settled_memory(r: redis.Redis, settle_s: float = 1.0, limit_s: float = 5.0, reset: bool = False) -> dict[str, Any]:
    """`INFO memory` once used_memory has not changed for `settle_s` (the server frees closed
    clients and shrinks emptied hash tables in its cron), or after `limit_s`. `reset`: first
    empty the slow log and reset the statistics (CONFIG RESETSTAT frees the latency histograms)."""
    slow = int(r.slowlog_len())
    if reset:
        r.slowlog_reset()
        r.config_resetstat()
    deadline = time.monotonic() + limit_s
    last = r.info("memory")
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = r.info("memory")
        if now["used_memory"] != last["used_memory"]:
            stable_since = time.monotonic()
        last = now
        if time.monotonic() - stable_since >= settle_s:
            break
    out: dict[str, Any] = {k: int(v) for k, v in last.items() if isinstance(v, int)}
    out["slowlog_len"] = slow  # entries when the reading started (before any reset)
    out["memory_stats"] = {k: v for k, v in r.memory_stats().items() if isinstance(v, (int, float, dict))}
    return out


def memory_statuses(url: str, ids: list[str]) -> dict[str, int]:
    """Status of every task, on a connection of its own (closed after, so its buffers do not
    stay in used_memory); a key already gone counts as `expired`."""
    client = redis.Redis.from_url(url, decode_responses=True)
    counts: dict[str, int] = {}
    try:
        for i in range(0, len(ids), 5000):
            pipe = client.pipeline(transaction=False)
            for task_id in ids[i : i + 5000]:
                pipe.hget(KEYS.task(task_id), "status")
            for status in pipe.execute():
                counts[status or "expired"] = counts.get(status or "expired", 0) + 1
    finally:
        client.connection_pool.disconnect()
    return counts
