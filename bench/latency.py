"""Section 3, latency: one idle, warmed worker; echo tasks sent one at a time at a steady rate;
enqueue→start/finish from the task hash's Redis times, and the status long-poll's wake-up."""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse

from bench.config import QUEUE, Config
from bench.metrics import Metrics, pct
from bench.procs import Proc, wait_for
from bench.stack import Stack, Store, kafka_rebalances
from taskbus.task import TaskSpec

FIELDS = ("status", "created_ms", "started_ms", "finished_ms")


def run_latency(stack: Stack, cfg: Config, m: Metrics) -> None:
    """Each round on Redis Streams, then (with `kafka`) right after it on Kafka: drift hits both."""
    stack.flush()
    status, status_base, _ = stack.taskbus_function("status")
    [worker] = stack.taskbus_workers(1, 8)
    store = Store(stack.settings())
    try:
        # warm: imports, pools, the scripts' SHA cache on both sides
        paced(store, 100, cfg.rate)
        wait_stream_empty(stack, store)
        for rnd in range(cfg.rounds):
            print(
                f"  latency round {rnd + 1}/{cfg.rounds}: {cfg.latency_tasks} tasks at {cfg.rate:.0f}/s",
                flush=True,
            )
            ids = paced(store, cfg.latency_tasks, cfg.rate)
            add_latency(m, "", wait_finished(stack, store, ids))
            wake = longpolls(stack, store, status_base, cfg.longpolls)
            for p in (50, 99):
                m.add(f"latency/longpoll_wake/p{p}", pct(wake, p), "ms")
            m.add("latency/longpoll_wake/max", max(wake), "ms")
            print(
                f"    long-poll wake-up p50/p99/max {pct(wake, 50):.2f}/{pct(wake, 99):.2f}/{max(wake):.2f} ms",
                flush=True,
            )
            stack.flush()
            if stack.kafka is not None:
                try:
                    kafka_latency_round(stack, cfg, m, rnd)
                except Exception as exc:  # noqa: BLE001 - the Redis rows still count
                    m.errors.append(f"latency taskbus on Kafka round {rnd + 1}: {exc}")
                    print(f"    FAILED: {exc}", flush=True)
    finally:
        store.client.close()
        worker.stop()
        status.stop()


def kafka_latency_round(stack: Stack, cfg: Config, m: Metrics, rnd: int) -> None:
    """The Redis round's measurement on the Kafka channel: one worker (CONCURRENCY=8) on a
    fresh queue, warmed by 100 tasks (the first wait for its group join), then idle, then
    the same paced echo tasks. created_ms is taken before the record is produced, so
    enqueue→start includes the producer's wait for the broker's ack."""
    queue = stack.fresh_kafka_queue()
    [worker] = stack.workers_with(stack.kafka_settings(queue, concurrency=8), 1, "kafka-latency")
    store = stack.kafka_store(queue)
    try:
        print(
            f"  latency round {rnd + 1}/{cfg.rounds}: taskbus on Kafka (queue {queue}), "
            f"{cfg.latency_tasks} tasks at {cfg.rate:.0f}/s after 100 warm-up tasks",
            flush=True,
        )
        warm = paced(store, 100, cfg.rate, queue)
        wait_finished(stack, store, warm, worker)
        ids = paced(store, cfg.latency_tasks, cfg.rate, queue)
        add_latency(m, "kafka_", wait_finished(stack, store, ids, worker))
        m.add("latency/kafka/rebalances", kafka_rebalances([worker]), "rebalances")
    finally:
        stack.close_kafka_stores()
        worker.stop()


def add_latency(m: Metrics, prefix: str, records: list[dict[str, str]]) -> None:
    """enqueue→start and enqueue→finish p50/p99/max of one round, from the task hashes."""
    start = [int(r["started_ms"]) - int(r["created_ms"]) for r in records]
    finish = [int(r["finished_ms"]) - int(r["created_ms"]) for r in records]
    for name, values in (("enqueue_start", start), ("enqueue_finish", finish)):
        m.add(f"latency/{prefix}{name}/p50", pct(values, 50), "ms")
        m.add(f"latency/{prefix}{name}/p99", pct(values, 99), "ms")
        m.add(f"latency/{prefix}{name}/max", max(values), "ms")
    print(
        f"    enqueue→start p50/p99/max {pct(start, 50)}/{pct(start, 99)}/{max(start)} ms, "
        f"→finish {pct(finish, 50)}/{pct(finish, 99)}/{max(finish)} ms",
        flush=True,
    )


def paced(store: Store, count: int, rate: float, queue: str = QUEUE) -> list[str]:
    """Enqueue `count` echo tasks at `rate` per second, on a fixed schedule (no catch-up drift)."""
    spec = TaskSpec(type="echo", payload={"n": 1}, queue=queue)
    ids: list[str] = []
    t = time.perf_counter()
    for i in range(count):
        delay = t + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        ids.append(store.enqueue(spec)[0])
    return ids


def wait_stream_empty(stack: Stack, store: Store) -> None:
    """Wait for the Redis warm-up tasks: every entry of the work stream read."""
    wait_for(lambda: stack.r.xlen(store.keys.stream(QUEUE)) == 0, 30, "the warm-up tasks")


def wait_finished(stack: Stack, store: Store, ids: list[str], proc: Proc | None = None) -> list[dict[str, str]]:
    """The task hashes' times once every task in `ids` has succeeded (or `proc` exits)."""

    def fetch() -> list[dict[str, str]] | None:
        pipe = stack.r.pipeline(transaction=False)
        for task_id in ids:
            pipe.hmget(store.keys.task(task_id), *FIELDS)
        rows = pipe.execute()
        if any(row[0] != "succeeded" for row in rows):
            return None
        return [dict(zip(FIELDS, row)) for row in rows]

    result: list[dict[str, str]] = wait_for(fetch, 30, f"{len(ids)} latency tasks to finish", proc, interval=0.2)
    return result


def longpolls(stack: Stack, store: Store, base: str, count: int) -> list[float]:
    """Task sleeps 30 ms while GET /tasks/<id>?wait=10 waits; wake-up = receive time - finished_ms."""
    parts = urllib.parse.urlsplit(base)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    spec = TaskSpec(type="sleep", payload={"seconds": 0.03}, queue=QUEUE)
    out: list[float] = []
    try:
        for _ in range(count):
            task_id = store.enqueue(spec)[0]
            conn.request("GET", f"/tasks/{task_id}?wait=10")
            resp = conn.getresponse()
            body = resp.read()
            received_ms = time.time() * 1000
            if resp.status != 200:
                raise RuntimeError(f"long-poll answered {resp.status}: {body[:200]!r}")
            if json.loads(body)["status"] != "succeeded":
                raise RuntimeError(f"long-poll answered before the task finished: {body[:300]!r}")
            finished_ms = int(stack.r.hget(store.keys.task(task_id), "finished_ms"))
            out.append(received_ms - finished_ms)
            time.sleep(0.01)
    finally:
        conn.close()
    return out
