"""Section "limits": the cost of flow control. In every round, the same drain three times,
interleaved: `incr` tasks with no limit, under a per-key concurrency limit, and under a per-key
rate limit (100 keys; bench/handlers_limits.py). N tasks queued first, then 2 workers x
CONCURRENCY 16; tasks/s from the first to the last completion (the INCR counter), with Redis CPU
per task. Checked: counter == N, no slot left held, nothing left throttled."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from bench.config import COUNTER, POLL_S, QUEUE, Config
from bench.metrics import Metrics
from bench.stack import Stack, Store
from taskbus.keys import Keys
from taskbus.task import TaskSpec

HANDLERS = "bench.handlers_limits"
KEYS = 100
PROCS, CONCURRENCY = 2, 16
ROWS = {
    "none": ("incr", "no limit"),
    "concurrency": ("incr.conc", "concurrency=4 per key, 100 keys"),
    "rate": ("incr.rate", "rate=1000/s burst=10 per key, 100 keys"),
}


def run_limits(stack: Stack, cfg: Config, m: Metrics) -> None:
    for rnd in range(cfg.rounds):
        for row, (task_type, label) in ROWS.items():
            print(f"  limits round {rnd + 1}/{cfg.rounds}: {label} (N={cfg.n})", flush=True)
            try:
                tasks_s, redis_us = drain(stack, task_type, cfg.n)
            except Exception as exc:  # noqa: BLE001 - one failed row must not end the section
                m.errors.append(f"limits {label} round {rnd + 1}: {exc}")
                tasks_s = redis_us = None
            m.add(f"limits/{row}/tasks_s", tasks_s, "tasks/s", label)
            m.add(f"limits/{row}/redis_cpu_us", redis_us, "µs/task", label)
            if tasks_s is not None:
                print(f"    {tasks_s:,.0f} tasks/s, Redis {redis_us:.1f} µs/task", flush=True)
    stack.flush()


def drain(stack: Stack, task_type: str, n: int) -> tuple[float, float]:
    stack.flush()
    settings = stack.settings(handlers=HANDLERS, concurrency=CONCURRENCY)
    store = Store(settings)
    try:
        specs = [(TaskSpec(type=task_type, payload={"k": i % KEYS}, queue=QUEUE), None) for i in range(n)]
        for i in range(0, n, 1000):
            store.enqueue_many(specs[i:i + 1000])
    finally:
        store.close()
    workers = stack.workers_with(settings, PROCS, "limits")
    try:
        first_t, first_cpu, first_c = wait_for(stack, lambda c: c > 0)
        last_t, last_cpu, _ = wait_for(stack, lambda c: c >= n)
    finally:
        for w in workers:
            w.stop()
    keys = Keys(settings.key_prefix)
    left = stack.r.hlen(keys.limit_holders(QUEUE)) + stack.r.zcard(keys.throttled(QUEUE))
    if left:
        raise RuntimeError(f"{task_type}: {left} slots held or tasks throttled after the drain")
    done = n - first_c
    return done / (last_t - first_t), (last_cpu - first_cpu) * 1e6 / done


def wait_for(stack: Stack, reached: Callable[[int], bool], stall_s: float = 60) -> tuple[float, float, int]:
    """(time, Redis CPU s, counter) once the counter satisfies `reached`."""
    deadline = time.perf_counter() + stall_s
    while True:
        c = int(stack.r.get(COUNTER) or 0)
        if reached(c):
            return time.perf_counter(), stack.redis_cpu(), c
        if time.perf_counter() > deadline:
            raise RuntimeError(f"no drain within {stall_s:.0f} s (counter {c})")
        time.sleep(POLL_S)


def limits_table(w: Callable[[str], None], s: dict[str, Any]) -> None:
    """Section 7's rows, each with its ratio to the unlimited drain of the same run."""
    from bench.report import fmt, ratio, rfmt

    w("")
    w(f"7. FLOW CONTROL  drain of incr tasks, {PROCS} workers x CONCURRENCY {CONCURRENCY}, rows interleaved per round")
    hdr = f"{'limit':<44} {'tasks/s':>22} {'Redis µs/task':>22} {'÷ none':>7}"
    w(hdr)
    w("-" * len(hdr))
    for row, (_, label) in ROWS.items():
        key = f"limits/{row}/tasks_s"
        w(f"{label:<44} {fmt(s, key):>22} {fmt(s, f'limits/{row}/redis_cpu_us', 1):>22} "
          f"{rfmt(ratio(s, key, 'limits/none/tasks_s')):>7}")
