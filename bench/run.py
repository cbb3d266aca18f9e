"""`make bench` — python -m bench.run [--quick] [--rounds R] [--n N]
[--only drain,enqueue,latency,longpoll,peers,kafka,fsync,memory,console,limits,tracing]

Starts its own Valkey server, taskbus functions/workers and peer queues on free loopback
ports, measures drain, enqueue and latency over several rounds (round-robin, so drift hits
every system alike), prints one table of medians [min–max] with taskbus ÷ peer ratios
computed from this run only, and writes everything (every per-round value) to
bench/results/<timestamp>.json. The memory section (once, on a Valkey of its own) reports
Redis `used_memory` with 100,000 finished tasks held and again after their RESULT_TTL_S.
`kafka` adds taskbus on its Kafka channel (CHANNEL=kafka, one embedded tansu broker for the
run, a fresh queue, hence topic and consumer group, per round) to the drain and latency
sections, next to taskbus on Redis Streams, with Kafka ÷ Redis ratios. The console section
(on a Valkey of its own) times the operator core's overview and listing pages, in process and
over the console function's HTTP API, with 1,000,000 tasks queued and 100,000 dead letters.
Every process it starts is stopped on every exit path.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import traceback
from collections.abc import Callable

from bench import console, drain, enqueue, fsync, latency, limits, longpoll, memory, procs, tracing
from bench.config import RESULTS, Config
from bench.load import Load, ensure_wrk
from bench.metrics import Metrics
from bench.procs import ROOT
from bench.report import table
from bench.result import Span, build_result
from bench.stack import Stack

Section = tuple[str, Callable[[], None]]


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=2000, 1 round, short HTTP levels: a try-out")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--n", type=int, help="tasks per drain (default 20000)")
    ap.add_argument(
        "--only",
        default="drain,enqueue,latency,longpoll,peers,kafka,fsync,memory,console,limits,tracing",
        help="comma-separated sections: drain, enqueue, latency, longpoll, peers, kafka, fsync, memory, console, "
        "limits, tracing (kafka: taskbus on its Kafka channel, in the drain section and, with latency, in the "
        "latency section)",
    )
    ap.add_argument(
        "--systems",
        default="",
        help="drain only these systems (key substrings, comma-separated), e.g. taskbus/2p,dramatiq,kafka",
    )
    ap.add_argument("--python-load", action="store_true", help="use the Python load generator even if wrk exists")
    ap.add_argument("--memory-tasks", type=int, help="tasks held in the memory section (default 100000; 20000 --quick)")
    ap.add_argument(
        "--longpoll-clients", type=int, default=2000, help="concurrent ?wait=30 clients on one status instance"
    )
    ap.add_argument(
        "--longpoll-settings",
        default="",
        help="Settings fields of the long-poll section's status instance, e.g. "
        "redis_max_connections=512,status_threads=1024 (to find the next limit)",
    )
    ap.add_argument(
        "--console-tasks", type=int, help="queued tasks in the console section, dead letters a tenth (default "
        "1000000; 100000 --quick)"
    )
    ap.add_argument("--memory-ttl", type=int, default=20, help="RESULT_TTL_S of the memory section's workers (s)")
    return ap.parse_args()


def sections(stack: Stack, cfg: Config, m: Metrics, load: Load | None) -> list[Section]:
    """The selected sections in run order. The peers and kafka rows run in the drain section even
    without `drain` (which selects the Redis taskbus rows); it is then named after the first."""
    runs: list[Section] = [
        ("drain", lambda: drain.run_drains(stack, cfg, m)),
        ("enqueue", lambda: enqueue.run_enqueue(stack, cfg, m, load)),
        ("latency", lambda: latency.run_latency(stack, cfg, m)),
        ("longpoll", lambda: longpoll.run_longpoll(stack, cfg, m)),
        ("fsync", lambda: fsync.run_fsync(stack, cfg, m)),
        ("memory", lambda: memory.run_memory(stack, cfg, m)),
        ("console", lambda: console.run_console(stack, cfg, m)),
        ("limits", lambda: limits.run_limits(stack, cfg, m)),
        ("tracing", lambda: tracing.run_tracing(stack, cfg, m, load)),
    ]
    drain_parts = [x for x in ("drain", "peers", "kafka") if x in cfg.only]
    if drain_parts:
        runs[0] = (drain_parts[0], runs[0][1])
    return [(name, fn) for name, fn in runs if name in cfg.only]


def run_sections(runs: list[Section], m: Metrics, spans: list[Span]) -> None:
    """Run each section; one that fails is reported and the next still runs."""
    for name, fn in runs:
        print(f"== {name}", flush=True)
        t_section = time.monotonic()
        try:
            fn()
        except Exception as exc:  # noqa: BLE001 - report what ran, and why the rest did not
            m.errors.append(f"{name}: {type(exc).__name__}: {exc}")
            traceback.print_exc()
        spans.append((name, t_section, time.monotonic()))


def main() -> int:
    args = parse_args()
    cfg = Config.from_args(args)
    started = dt.datetime.now().astimezone()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    run_dir = ROOT / "bench" / ".run" / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stack = Stack(run_dir, kafka="kafka" in cfg.only)
    m = Metrics()
    load: Load | None = None
    setup_log: list[str] = []
    spans: list[Span] = []
    t_start = time.monotonic()
    with procs.cleanup_on_exit():
        try:
            stack.host.start()
            stack.start()
            if "enqueue" in cfg.only or "tracing" in cfg.only:
                load = Load(None if args.python_load else ensure_wrk(setup_log))
            run_sections(sections(stack, cfg, m, load), m, spans)
        finally:
            if load:
                load.close()
            procs.stop_all()
            valkey = stack.server_version()
            stack.stop()
            stack.host.stop()
    result = build_result(
        cfg,
        m,
        stack,
        started=started,
        t_start=t_start,
        valkey=valkey,
        load_tool=load.tool if load else "—",
        spans=spans,
        setup_log=setup_log,
        run_dir=run_dir,
    )
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print()
    print(table(result))
    print(f"\nwritten: {out.relative_to(ROOT)}  ({result['elapsed_s']} s)")
    return 1 if m.errors else 0


if __name__ == "__main__":
    sys.exit(main())
