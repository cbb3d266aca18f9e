"""`make bench-soak` — python -m bench.soak [--tasks 1000000] [--every 50000] [--concurrency 8]

One taskbus worker (HANDLERS=bench.handlers, one INCR per task) runs TASKS tasks fed by a
producer that keeps the backlog near 20,000; every EVERY tasks it prints the worker's RSS,
the rate over the interval and Redis's memory. Ends with the RSS growth and a check that
every task ran once and the stream is empty. Not run in CI (about 10–15 minutes here).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import threading
import time

import psutil
import redis

from bench import procs
from bench.config import COUNTER, PREFIX, QUEUE, RESULTS
from bench.procs import ROOT, Proc
from bench.stack import Store
from local.commands import argv as service_argv
from local.embedded import EmbeddedServer
from taskbus.settings import Settings
from taskbus.task import TaskSpec

BACKLOG = 20_000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=1_000_000)
    ap.add_argument("--every", type=int, default=50_000)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = ROOT / "bench" / ".run" / f"soak-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    server = EmbeddedServer(run_dir / "valkey", appendonly=False)
    rows: list[dict[str, float]] = []
    failure = ""
    with procs.cleanup_on_exit():
        server.start()
        try:
            r = redis.Redis.from_url(server.url, decode_responses=True)
            # finished tasks expire after a minute so Redis memory stays bounded over 1M tasks
            settings = Settings(
                redis_url=server.url,
                key_prefix=PREFIX,
                queues=(QUEUE,),
                handlers="bench.handlers",
                concurrency=args.concurrency,
                result_ttl_s=60,
            )
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            for field in dataclasses.fields(settings):
                if field.metadata.get("env") != "custom":
                    value = getattr(settings, field.name)
                    env[field.name.upper()] = ",".join(value) if isinstance(value, tuple) else str(value)
            worker = Proc("soak-worker", service_argv("worker", settings), env, run_dir / "worker.log")
            stop = threading.Event()
            producer = threading.Thread(target=produce, args=(settings, r, args.tasks, stop), daemon=True)
            producer.start()
            ps = psutil.Process(worker.pid)
            print(
                f"soak: {args.tasks:,} tasks, one worker (CONCURRENCY={args.concurrency}), RSS every {args.every:,}",
                flush=True,
            )
            print(
                f"{'tasks':>10} {'RSS MiB':>9} {'tasks/s':>9} {'worker CPU ms/task':>19} {'Redis MiB':>10}", flush=True
            )
            mark, t_mark = 0, time.perf_counter()
            cpu_mark = sum(ps.cpu_times()[:2])
            last_change, last = time.perf_counter(), 0
            while mark < args.tasks:
                time.sleep(0.05)
                done = int(r.get(COUNTER) or 0)
                now = time.perf_counter()
                if done != last:
                    last, last_change = done, now
                elif now - last_change > 30:
                    raise RuntimeError(f"no progress for 30 s at {done:,} tasks")
                if not worker.alive():
                    raise RuntimeError(f"the worker exited ({worker.popen.returncode}):\n{worker.tail()}")
                if done >= mark + args.every or done >= args.tasks:
                    cpu = sum(ps.cpu_times()[:2])
                    row = {
                        "tasks": done,
                        "rss_mib": ps.memory_info().rss / 2**20,
                        "tasks_s": (done - mark) / (now - t_mark),
                        "cpu_ms_per_task": (cpu - cpu_mark) * 1000 / max(1, done - mark),
                        "redis_mib": r.info("memory")["used_memory"] / 2**20,
                    }
                    rows.append(row)
                    print(
                        f"{done:>10,} {row['rss_mib']:>9.1f} {row['tasks_s']:>9.0f} {row['cpu_ms_per_task']:>19.3f} "
                        f"{row['redis_mib']:>10.1f}",
                        flush=True,
                    )
                    mark, t_mark, cpu_mark = done, now, cpu
            stop.set()
            time.sleep(0.5)
            final = int(r.get(COUNTER) or 0)
            stream = Store(settings).keys.stream(QUEUE)
            procs.wait_for(
                lambda: r.xlen(stream) == 0 and r.xpending(stream, settings.consumer_group)["pending"] == 0,
                10,
                "the stream to drain",
            )
            if final != args.tasks:
                failure = f"counter {final:,} != {args.tasks:,}"
        except Exception as exc:  # noqa: BLE001 - report, then clean up
            failure = f"{type(exc).__name__}: {exc}"
        finally:
            procs.stop_all()
            server.stop()
    if len(rows) >= 2:
        print(
            f"RSS: {rows[0]['rss_mib']:.1f} MiB after {rows[0]['tasks']:,} tasks → {rows[-1]['rss_mib']:.1f} MiB after "
            f"{rows[-1]['tasks']:,} ({rows[-1]['rss_mib'] - rows[0]['rss_mib']:+.1f} MiB)"
        )
    print("soak " + ("FAILED: " + failure if failure else "ok: every task ran once, stream empty"))
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"soak-{stamp}.json"
    out.write_text(
        json.dumps({"tasks": args.tasks, "concurrency": args.concurrency, "rows": rows, "failure": failure}, indent=1)
    )
    print(f"written: {out.relative_to(ROOT)}")
    return 1 if failure else 0


def produce(settings: Settings, r: redis.Redis, total: int, stop: threading.Event) -> None:
    """Enqueue `total` tasks from 4 threads, pausing while the backlog exceeds BACKLOG."""
    store = Store(settings)
    spec = TaskSpec(type="incr", queue=QUEUE)
    stream = store.keys.stream(QUEUE)
    lock = threading.Lock()
    left = [total]

    def take(k: int) -> int:
        with lock:
            k = min(k, left[0])
            left[0] -= k
            return k

    def loop() -> None:
        while not stop.is_set():
            if r.xlen(stream) > BACKLOG:
                time.sleep(0.05)
                continue
            k = take(500)
            if k == 0:
                return
            for _ in range(k):
                store.enqueue(spec)

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


if __name__ == "__main__":
    sys.exit(main())
