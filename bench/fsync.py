"""Section 4b, enqueue durability: what a durable 202 (ENQUEUE_FSYNC) costs, on a Valkey with an
append-only file, under each `appendfsync` policy."""

from __future__ import annotations

import concurrent.futures
import time

import redis

from bench.config import FSYNC_CLIENTS, FSYNC_SAMPLE, QUEUE, Config
from bench.metrics import Metrics, pct
from bench.stack import Stack, Store
from taskbus.task import TaskSpec

# (row name, appendfsync, ENQUEUE_FSYNC)
MODES = [("off", "everysec", False), ("everysec", "everysec", True), ("always", "always", True)]


def run_fsync(stack: Stack, cfg: Config, m: Metrics) -> None:
    """Store.enqueue on a Valkey of its own with an append-only file, without ENQUEUE_FSYNC, with
    it under `appendfsync everysec` (each enqueue waits for the next fsync), and with it under
    `appendfsync always`; one client at a time (latency), then FSYNC_CLIENTS threads (clients
    share each fsync)."""
    server = stack.own_valkey("valkey-fsync", appendonly=True)
    admin = redis.Redis.from_url(server.url)
    try:
        for rnd in range(cfg.rounds):
            for name, appendfsync, fsync in MODES:
                admin.config_set("appendfsync", appendfsync)
                store = Store(stack.settings(redis_url=server.url, enqueue_fsync=fsync))
                fsync_mode(m, store, name, rnd)
                store.client.close()
                admin.flushall()
    finally:
        admin.close()
        server.stop()


def fsync_mode(m: Metrics, store: Store, name: str, rnd: int) -> None:
    """One mode: latency of FSYNC_SAMPLE enqueues one at a time, then throughput of FSYNC_CLIENTS threads."""
    spec = TaskSpec(type="echo", payload={"n": 1}, queue=QUEUE)
    store.enqueue(spec)  # connect, load the script
    lat: list[float] = []
    for _ in range(FSYNC_SAMPLE):
        t = time.perf_counter()
        store.enqueue(spec)
        lat.append((time.perf_counter() - t) * 1000)
    m.add(f"fsync/{name}/p50", pct(lat, 50), "ms")
    m.add(f"fsync/{name}/p99", pct(lat, 99), "ms")
    per_client = FSYNC_SAMPLE * 2
    with concurrent.futures.ThreadPoolExecutor(FSYNC_CLIENTS) as pool:
        t = time.perf_counter()
        list(pool.map(lambda _: [store.enqueue(spec) for _ in range(per_client)], range(FSYNC_CLIENTS)))
        elapsed = time.perf_counter() - t
    m.add(f"fsync/{name}/c{FSYNC_CLIENTS}", FSYNC_CLIENTS * per_client / elapsed, "tasks/s")
    print(
        f"  fsync round {rnd + 1}: {name}: p50 {pct(lat, 50):.2f} ms, "
        f"{FSYNC_CLIENTS} clients {FSYNC_CLIENTS * per_client / elapsed:,.0f} tasks/s",
        flush=True,
    )
