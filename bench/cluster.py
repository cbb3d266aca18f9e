"""Redis Cluster vs standalone, in the same run (issue 15): Python enqueue and HTTP enqueue
(one queue, and three queues that live on three masters), the cost of ENQUEUE_REPLICAS=1, and a
worker's drain of pre-queued tasks.

`python -m bench.cluster [--n 5000] [--http-s 3]`. The standalone Valkey has one replica
attached (so `WAIT 1` means the same thing on both); the cluster is 3 masters + 3 replicas
(`testkit.rcluster`). All on this machine's cores, the client included: a cluster cannot show
its multi-machine scaling here, only what its client-side routing costs.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from local.embedded import free_port
from taskbus.admin import Admin
from taskbus.enqueue import Enqueuer
from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.task import TaskSpec
from testkit.functions import start_functions
from testkit.procs import spawn, wait_until
from testkit.rcluster import ValkeyCluster, primary_with_replica, queues_on_masters

THREADS = 8  # Python enqueue clients
HTTP_CLIENTS = 16


@contextmanager
def cluster(base: Path) -> Iterator[str]:
    c = ValkeyCluster(base)
    c.start()
    try:
        yield c.url
    finally:
        c.stop()


def python_enqueue(settings: Settings, queues: list[str], n: int) -> dict[str, float]:
    """p50 of one enqueue at a time, then tasks/s of THREADS threads, round-robin over `queues`."""
    enqueuer = Enqueuer(settings)
    specs = [TaskSpec(type="echo", payload={"n": i}, queue=queues[i % len(queues)]) for i in range(n)]
    try:
        for spec in specs[: len(queues)]:
            enqueuer.enqueue(spec)  # connect, load the script on each master
        latencies = []
        for spec in specs[:500]:
            began = time.perf_counter()
            enqueuer.enqueue(spec)
            latencies.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(enqueuer.enqueue, specs))
        rate = n / (time.perf_counter() - began)
    finally:
        enqueuer.close()
    return {"p50_ms": sorted(latencies)[len(latencies) // 2], "tasks_s": rate}


def http_enqueue(settings: Settings, queues: list[str], seconds: float, log_dir: Path) -> dict[str, float]:
    """HTTP_CLIENTS keep-alive clients POSTing /tasks for `seconds` against a real enqueue function
    (the clients are made and connected first: making one costs more than a request)."""
    pair = start_functions(settings, log_dir)
    clients = [httpx.Client(timeout=10) for _ in range(HTTP_CLIENTS)]

    def client(i: int, stop: float) -> int:
        done = 0
        while time.monotonic() < stop:
            body = {"type": "echo", "queue": queues[(i + done) % len(queues)], "payload": {}}
            assert clients[i].post(pair.enqueue + "/tasks", json=body).status_code == 202
            done += 1
        return done

    try:
        for i in range(HTTP_CLIENTS):  # connect each
            clients[i].post(pair.enqueue + "/tasks", json={"type": "echo", "queue": queues[0], "payload": {}})
        began = time.monotonic()
        with concurrent.futures.ThreadPoolExecutor(HTTP_CLIENTS) as pool:
            total = sum(pool.map(lambda i: client(i, began + seconds), range(HTTP_CLIENTS)))
        return {"requests_s": total / (time.monotonic() - began)}
    finally:
        for http in clients:
            http.close()
        pair.stop()


def drain(settings: Settings, queues: list[str], n: int, log_dir: Path) -> dict[str, float]:
    """N tasks queued on paused queues, a worker started and seen, the queues resumed: tasks/s
    until every stream is empty."""
    admin = Admin(settings)
    keys = Keys(settings.key_prefix)
    for q in queues:
        admin.pause(q, actor="bench")
    enqueuer = Enqueuer(settings)
    specs = [(TaskSpec(type="echo", payload={}, queue=queues[i % len(queues)]), None) for i in range(n)]
    for at in range(0, n, 500):
        enqueuer.enqueue_many(specs[at:at + 500])
    enqueuer.close()
    worker = spawn("worker", dataclasses.replace(settings, queues=tuple(queues)), log_dir)
    try:
        wait_until(lambda: all(admin.overview(q)["workers"] for q in queues), timeout=30, message="worker up")
        began = time.monotonic()
        for q in queues:
            admin.resume(q, actor="bench")
        wait_until(lambda: sum(int(admin.client.xlen(keys.stream(q))) for q in queues) == 0, timeout=300,
                   interval=0.05, message="drained")
        return {"tasks_s": n / (time.monotonic() - began)}
    finally:
        worker.stop()
        admin.close()


def measure(name: str, url: str, is_cluster: bool, args: argparse.Namespace, base: Path) -> dict[str, Any]:
    prefix = f"bc{int(time.time())}"
    many = queues_on_masters("bq", prefix)  # on three masters of the cluster; names alone on standalone
    drained = queues_on_masters("dq", prefix)
    settings = Settings(redis_url=url, redis_cluster=is_cluster, key_prefix=prefix, handlers="worker_fn.handlers",
                        concurrency=16, enqueue_port=free_port(), status_port=free_port())
    out: dict[str, Any] = {}
    for layout, count in (("1 queue", 1), ("3 queues", 3)):
        queues = many[:count]
        for replicas in (0, 1):
            s = dataclasses.replace(settings, enqueue_replicas=replicas)
            out[f"python enqueue, {layout}, ENQUEUE_REPLICAS={replicas}"] = python_enqueue(s, queues, args.n)
        out[f"HTTP enqueue, {layout}"] = http_enqueue(settings, queues, args.http_s, base / f"{name}-http")
        out[f"drain, {layout}"] = drain(settings, drained[:count], args.n, base / f"{name}-drain")
    s = dataclasses.replace(settings, enqueue_replicas=1)
    out["HTTP enqueue, 3 queues, ENQUEUE_REPLICAS=1"] = http_enqueue(s, many, args.http_s, base / f"{name}-http1")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000, help="tasks per enqueue and drain measurement")
    parser.add_argument("--http-s", type=float, default=3.0, help="seconds of HTTP enqueue per measurement")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    results: dict[str, Any] = {"load_average_before": os.getloadavg()}
    with primary_with_replica(base / "standalone") as url:
        results["standalone"] = measure("standalone", url, False, args, base)
    with cluster(base / "cluster") as url:
        results["cluster"] = measure("cluster", url, True, args, base)
    results["load_average_after"] = os.getloadavg()
    print(f"host load average before {results['load_average_before']}, after {results['load_average_after']}")
    for row in results["standalone"]:
        a, b = results["standalone"][row], results["cluster"][row]
        cells = "; ".join(f"{k}: standalone {a[k]:,.1f}, cluster {b[k]:,.1f} ({b[k] / a[k]:.2f}x)" for k in a)
        print(f"{row}: {cells}", flush=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
