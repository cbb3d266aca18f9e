"""Section 8, tracing: what OpenTelemetry tracing costs on the two hot paths, the drain (one
worker process) and HTTP enqueue (`taskbus serve enqueue`, c=16), in three variants run
round-robin within each round, so drift hits all alike:

- `absent`: OpenTelemetry cannot be imported (a shadow `opentelemetry` package that raises
  ImportError is first on PYTHONPATH), as if it were not installed;
- `off`: installed, tracing off (no OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_TRACES_EXPORTER);
- `on`: spans exported over OTLP/HTTP to a real receiver in this process (testkit.otlp).

`absent` against `off` shows off costs nothing (taskbus imports nothing of OpenTelemetry while
off: were it imported, the `absent` processes would fail); `on` against `off` is the cost in %.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

from bench.config import BODY, Config
from bench.drain import drain_once
from bench.enqueue import HttpLevels
from bench.load import Load
from bench.metrics import Metrics
from bench.procs import ROOT, Proc
from bench.stack import Stack
from bench.systems import System, check_taskbus_drained, taskbus_one
from testkit.otlp import Collector

VARIANTS = ("absent", "off", "on")
CONNS = 16
CONCURRENCY = 32
SHADOW = 'raise ImportError("opentelemetry is shadowed by the bench (variant `absent`)")\n'


def run_tracing(stack: Stack, cfg: Config, m: Metrics, load: Load | None) -> None:
    shadow = stack.run_dir / "no-otel"
    (shadow / "opentelemetry").mkdir(parents=True, exist_ok=True)
    (shadow / "opentelemetry" / "__init__.py").write_text(SHADOW)
    with Collector() as collector:
        for rnd in range(cfg.rounds):
            for variant in VARIANTS:
                with variant_env(stack, variant, shadow, collector.url):
                    drain(stack, cfg, m, variant, rnd)
            if load is not None:
                for variant in VARIANTS:
                    with variant_env(stack, variant, shadow, collector.url):
                        http(stack, cfg, m, load, variant, rnd)
        m.add("tracing/spans_received", len(collector.spans), "spans", "spans the receiver decoded (variant on)")
    for part in ("drain", "http"):
        off, on = m.median(f"tracing/{part}/off"), m.median(f"tracing/{part}/on")
        absent = m.median(f"tracing/{part}/absent")
        if off and on and absent:
            m.notes.append(f"tracing, {part}: off/absent {off / absent:.3f}, on/off {on / off:.3f} "
                           f"(tracing on changes throughput by {100 * (on / off - 1):+.1f} %)")


@contextlib.contextmanager
def variant_env(stack: Stack, variant: str, shadow: Path, endpoint: str) -> Iterator[None]:
    if variant == "absent":
        with stack.environment(PYTHONPATH=f"{shadow}:{ROOT}"):
            yield
    elif variant == "on":
        with stack.environment(OTEL_EXPORTER_OTLP_ENDPOINT=endpoint, OTEL_SERVICE_NAME="bench"):
            yield
    else:
        yield


def drain(stack: Stack, cfg: Config, m: Metrics, variant: str, rnd: int) -> None:
    label = f"drain, 1 proc, CONCURRENCY={CONCURRENCY}, tracing {variant}"
    settings = stack.settings(concurrency=CONCURRENCY)
    system = System(
        key=f"tracing-{variant}", family="tracing", procs=1, n=cfg.n, label=label,
        one=functools.partial(taskbus_one, stack),
        start=lambda _queue: stack.workers_with(settings, 1, f"tracing-{variant}"),
        check=functools.partial(check_taskbus_drained, stack),
    )
    print(f"  tracing round {rnd + 1}/{cfg.rounds}: {label} (N={cfg.n})", flush=True)
    try:
        r = drain_once(stack, cfg, system)
    except Exception as exc:  # noqa: BLE001 - the other variants still count
        m.errors.append(f"tracing {label} round {rnd + 1}: {exc}")
        m.add(f"tracing/drain/{variant}", None, "tasks/s", label)
        return
    print(f"    {r['tasks_s']:.0f} tasks/s, worker CPU {r['worker_cpu_ms']:.3f} ms/task", flush=True)
    m.add(f"tracing/drain/{variant}", r["tasks_s"], "tasks/s", label)
    m.add(f"tracing/drain/{variant}/worker_cpu_ms", r["worker_cpu_ms"], "ms/task", label)


def http(stack: Stack, cfg: Config, m: Metrics, load: Load, variant: str, rnd: int) -> None:
    label = f"POST /tasks c={CONNS}, `taskbus serve enqueue`, tracing {variant}"
    proc: Proc | None = None
    try:
        proc, base, _ = stack.taskbus_function("enqueue")
        load.run(base + "/tasks", BODY, CONNS, 1)  # warm: imports, pools
        HttpLevels(cfg, m, load).run(f"tracing/http/{variant}", base + "/tasks", BODY, CONNS, rnd, 1, proc, label)
    except Exception as exc:  # noqa: BLE001
        m.errors.append(f"tracing {label} round {rnd + 1}: {exc}")
        m.add(f"tracing/http/{variant}", None, "tasks/s", label)
    finally:
        if proc is not None:
            proc.stop()
        stack.flush()
