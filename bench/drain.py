"""Sections 1 and 4, drain: N tasks queued first, then the workers start; tasks/s from the first
to the last completion (the INCR counter, polled), with worker, Redis and broker CPU per task."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import time
from collections.abc import Callable
from typing import Any

from bench import procs
from bench.config import COUNTER, POLL_S, QUEUE, Config
from bench.metrics import Metrics
from bench.procs import Proc
from bench.stack import Stack, kafka_rebalances
from bench.systems import Enqueue, EnqueueMany, System, drain_systems


def run_drains(stack: Stack, cfg: Config, m: Metrics) -> None:
    """Every round runs every selected system once (round-robin, so drift hits all alike)."""
    systems = [x for x in drain_systems(stack, cfg) if not cfg.systems or any(part in x.key for part in cfg.systems)]
    for rnd in range(cfg.rounds):
        for system in systems:
            print(f"  drain round {rnd + 1}/{cfg.rounds}: {system.label} (N={system.n})", flush=True)
            m.add(f"drain/{system.key}/n", system.n, "tasks", system.label)
            try:
                r = drain_once(stack, cfg, system)
            except Exception as exc:  # noqa: BLE001 - one failed system must not end the run
                m.errors.append(f"drain {system.label} round {rnd + 1}: {exc}")
                print(f"    FAILED: {exc}", flush=True)
                for metric in ("tasks_s", "worker_cpu_ms", "redis_cpu_us"):
                    m.add(f"drain/{system.key}/{metric}", None, "", system.label)
                continue
            record(m, system, r)
        if rnd == 0:
            systems = keep_best_concurrency(systems, m, cfg.rounds)
    stack.flush()


def record(m: Metrics, system: System, r: dict[str, Any]) -> None:
    """Print one drain's figures and add them to the metrics."""
    key, label = system.key, system.label
    print(
        "    "
        + ", ".join(f"{k}={v:.4g}" for k, v in r.items() if k != "commands")
        + "; Redis µs/task by command: "
        + ", ".join(f"{k} {v['usec_per_task']}" for k, v in list(r["commands"].items())[:4]),
        flush=True,
    )
    m.add(f"drain/{key}/tasks_s", r["tasks_s"], "tasks/s", label)
    m.add(f"drain/{key}/worker_cpu_ms", r["worker_cpu_ms"], "ms/task", label)
    m.add(f"drain/{key}/redis_cpu_us", r["redis_cpu_us"], "µs/task", label)
    if "broker_cpu_us" in r:
        m.add(f"drain/{key}/broker_cpu_us", r["broker_cpu_us"], "µs/task", label)
        m.add(f"drain/{key}/rebalances", r["rebalances"], "rebalances", label)
    m.add(f"drain/{key}/startup_s", r["startup_s"], "s", label)
    m.add(f"drain/{key}/host_other_cores", r["host_other_cores"], "cores", label)
    m.detail.setdefault(f"drain/{key}/redis_commands", []).append(r["commands"])
    m.add(f"enqueue/python1/{system.family}", r["enqueue_s"], "tasks/s", label)


def keep_best_concurrency(systems: list[System], m: Metrics, rounds: int) -> list[System]:
    """After round 1, later rounds run only the better CONCURRENCY per process count."""
    keep = []
    for system in systems:
        if system.family not in ("taskbus", "taskbus-kafka"):
            keep.append(system)
            continue
        rivals = [x for x in systems if x.family == system.family and x.procs == system.procs]
        best = max(rivals, key=lambda x: m.median(f"drain/{x.key}/tasks_s") or 0)
        if best is system:
            keep.append(system)
        elif rounds > 1:
            m.notes.append(f"{system.label}: round 1 only (slower than {best.label} in round 1)")
    return keep


def prequeue(one: Callable[[], Enqueue], many: Callable[[], EnqueueMany] | None, n: int, sample: int) -> float:
    """Queue n tasks; returns the one-at-a-time enqueue rate of the first `sample` (single-threaded,
    timed). The rest goes in from 8 threads, or in batches where the system has a `many` (Kafka:
    each enqueue waits for the broker's ack): only to save wall time."""
    enqueue = one()
    sample = min(n, sample)
    t = time.perf_counter()
    for _ in range(sample):
        enqueue()
    rate = sample / (time.perf_counter() - t)
    rest = n - sample
    if rest and many is not None:
        many()(rest)
    elif rest:
        threads = 8
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            shares = [rest // threads + (1 if i < rest % threads else 0) for i in range(threads)]
            list(pool.map(lambda k: [enqueue() for _ in range(k)], shares))
    return rate


@dataclasses.dataclass
class Reading:
    """Counter, clock and CPU counters at one instant of a drain."""

    t: float
    count: int
    worker_cpu: dict[int, float]
    redis_cpu: float
    broker_cpu: float


def read(stack: Stack, workers: list[Proc], t: float, count: int) -> Reading:
    cpu = procs.cpu_seconds([p for w in workers for p in w.tree()])
    return Reading(t, count, cpu, stack.redis_cpu(), stack.broker_cpu())


def drain_once(stack: Stack, cfg: Config, system: System) -> dict[str, Any]:
    """Queue n tasks, start the workers, time first→last completion from the counter."""
    n = system.n
    stack.flush()
    queue = system.fresh_queue() if system.fresh_queue is not None else QUEUE
    many = functools.partial(system.many, queue) if system.many is not None else None
    try:
        enqueue_rate = prequeue(functools.partial(system.one, queue), many, n, cfg.enqueue_sample)
    finally:
        stack.close_kafka_stores()
    stack.r.config_resetstat()
    workers = system.start(queue)
    try:
        started = time.perf_counter()
        first, last = wait_drained(stack, system, workers, started)
        commands = {
            name.removeprefix("cmdstat_"): {
                "calls_per_task": round(v["calls"] / n, 3),
                "usec_per_task": round(v["usec"] / n, 2),
            }
            for name, v in stack.r.info("commandstats").items()
        }
        # completion checks: nothing lost, nothing run twice, taskbus left no pending entry
        time.sleep(0.3)
        final = int(stack.r.get(COUNTER) or 0)
        if final != n:
            raise RuntimeError(f"{system.label}: counter {final} != {n} tasks")
        if system.check is not None:
            system.check(queue, n)
        result = drain_result(stack, first, last, n, enqueue_rate, started)
        if system.broker:
            result["broker_cpu_us"] = (last.broker_cpu - first.broker_cpu) * 1e6 / (n - first.count)
            result["rebalances"] = kafka_rebalances(workers)
        result["commands"] = dict(sorted(commands.items(), key=lambda kv: -kv[1]["usec_per_task"]))
    finally:
        for w in workers:
            w.stop()
    if system.after is not None:
        system.after(queue, n)  # Kafka: checks the offsets the workers committed as they left
    return result


def wait_drained(stack: Stack, system: System, workers: list[Proc], started: float) -> tuple[Reading, Reading]:
    """Poll the counter every POLL_S until it reaches n: the readings at the first completion and
    at the last. Fails when it stalls (60 s before the first, 20 s after) or a worker exits."""
    n = system.n
    first: Reading | None = None
    last_c, last_change = 0, started
    while True:
        c = int(stack.r.get(COUNTER) or 0)
        now = time.perf_counter()
        if c and first is None:
            first = read(stack, workers, now, c)
        if c >= n:
            last = read(stack, workers, now, c)
            break
        if c != last_c:
            last_c, last_change = c, now
        elif now - last_change > (60 if c == 0 else 20):
            raise RuntimeError(f"{system.label}: no progress for {now - last_change:.0f} s at {c}/{n}")
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"{system.label}: {w.name} exited ({w.popen.returncode}):\n{w.tail()}")
        time.sleep(POLL_S)
    assert first is not None
    return first, last


def drain_result(
    stack: Stack, first: Reading, last: Reading, n: int, enqueue_rate: float, started: float
) -> dict[str, Any]:
    """Per-task figures over the timed window, first→last completion (key order is print order)."""
    done = n - first.count
    elapsed = last.t - first.t
    mono_end = time.monotonic()
    other = stack.host.between(mono_end - elapsed, mono_end)[0]
    cpu = sum(last.worker_cpu.values()) - sum(first.worker_cpu.get(pid, 0.0) for pid in last.worker_cpu)
    return {
        "tasks_s": done / elapsed,
        "worker_cpu_ms": cpu * 1000 / done,
        "redis_cpu_us": (last.redis_cpu - first.redis_cpu) * 1e6 / done,
        "enqueue_s": enqueue_rate,
        "startup_s": first.t - started,
        "host_other_cores": other,
    }
