"""Section 6, console: the operator core's reads (the console's code path: `taskbus.admin.Admin`),
timed in this process on an empty queue and again with N tasks queued, N/10 dead letters, N/100
scheduled and 1,000 running, all on one queue of a Valkey of its own; and, when this checkout
has the console function, its HTTP latency and whether its memory grows with the task count."""

from __future__ import annotations

import dataclasses
import gc
import http.client
import json
import secrets
import statistics
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import psutil
import redis

from bench.config import (
    CONSOLE_BATCH,
    CONSOLE_CALLS,
    CONSOLE_DEEP_PAGES,
    CONSOLE_HTTP_CALLS,
    CONSOLE_RUNNING,
    QUEUE,
    Config,
)
from bench.handlers import RELEASE
from bench.metrics import Metrics, pct
from bench.procs import Proc, wait_for
from bench.stack import KEYS, Stack, describe_server, free_port
from local.commands import taskbus_executable
from taskbus import serving
from taskbus.admin import STATES, Admin
from taskbus.client import Client
from taskbus.settings import Settings

MIB = 1024 * 1024
FILL_SOCKET_TIMEOUT_S = 10.0
UNKNOWN_ID = f"{QUEUE}~{'0' * 32}"  # well formed, never enqueued: Admin.task's lookup on the empty queue


def run_console(stack: Stack, cfg: Config, m: Metrics) -> None:
    """Empty queue first (in process, then over HTTP, then the console's RSS), then the fill,
    then the same calls and reading again; the blocking workers are released and stopped last."""
    server = stack.own_valkey("valkey-console", appendonly=False)
    r = redis.Redis.from_url(server.url, decode_responses=True)
    settings = stack.settings(redis_url=server.url)
    admin = Admin(settings)
    fill = Fill(stack, r, settings, cfg.console_tasks)
    web: ConsoleWeb | None = None
    try:
        if "console" in getattr(serving, "FUNCTIONS", ()):
            web = ConsoleWeb(stack, settings)
            web.rss(m, "cold")
        else:
            m.na("console/http", "ms", "no `console` target in taskbus.serving.FUNCTIONS on this checkout")
        measure(admin, r, m, "empty", {"unknown": UNKNOWN_ID})
        if web is not None:
            web.calls(m, "empty")
            web.rss(m, "before")
        t_fill = time.monotonic()
        fill.run(m)
        m.add("console/fill_s", time.monotonic() - t_fill, "s")
        fill.check(m, admin.overview(QUEUE))
        measure(admin, r, m, "full", sample_ids(admin))
        if web is not None:
            web.calls(m, "full")
            web.rss(m, "after")
        m.add("console/redis_used_memory", float(r.info("memory")["used_memory"]), "bytes")
    finally:
        fill.release(admin)
        admin.close()
        if web is not None:
            web.proc.stop()
        r.close()
        server.stop()


class Fill:
    """The section's tasks, in the order that keeps each state apart on the one queue: dead letters
    first (workers run them, then stop), then the running ones (workers that stay, every slot
    blocked), then scheduled, then queued (nobody left to read them)."""

    def __init__(self, stack: Stack, r: redis.Redis, settings: Settings, n: int) -> None:
        self.stack, self.r, self.settings = stack, r, settings
        self.n, self.dead_n, self.scheduled_n = n, n // 10, n // 100
        self.blockers: list[Proc] = []

    def run(self, m: Metrics) -> None:
        m.add("console/tasks", self.n, "tasks")
        self.dead(m)
        self.running(m)
        self.enqueue(m, "scheduled", {"type": "echo", "delay_s": 3600}, self.scheduled_n)
        self.enqueue(m, "queued", {"type": "echo"}, self.n)

    def enqueue(self, m: Metrics, name: str, task: dict[str, Any], n: int) -> float:
        """`n` tasks by Client.enqueue_many (CONSOLE_BATCH per call), the real enqueue path; returns tasks/s."""
        item = {**task, "payload": {"n": 1}, "queue": QUEUE}
        # A 1000-task call can outlast the 0.8 s default socket timeout on a busy host; only the filler's
        client = Client(dataclasses.replace(self.settings, redis_socket_timeout_s=FILL_SOCKET_TIMEOUT_S))
        t = time.perf_counter()
        try:
            for i in range(0, n, CONSOLE_BATCH):
                client.enqueue_many([item] * min(CONSOLE_BATCH, n - i))
        finally:
            client.close()
        rate = n / (time.perf_counter() - t)
        m.add(f"console/fill/{name}_tasks_s", rate, "tasks/s")
        print(f"  {n:,} {name} by Client.enqueue_many ({CONSOLE_BATCH}/call): {rate:,.0f} tasks/s", flush=True)
        return rate

    def dead(self, m: Metrics) -> None:
        """Real dead letters: `permanent` tasks (PermanentError, no retry) run by 2 workers."""
        dead, n = KEYS.dead(QUEUE), self.dead_n
        self.enqueue(m, "dead-to-be", {"type": "permanent"}, n)
        t = time.monotonic()
        workers = self.stack.workers_with(dataclasses.replace(self.settings, concurrency=32), 2, "console-dead")
        try:
            wait_for(lambda: self._settled(workers) and self.r.xlen(dead) >= n, max(120.0, n / 500),
                     f"{n:,} dead letters", interval=0.1)
        finally:
            for w in workers:
                w.stop()
        rate = n / (time.monotonic() - t)
        m.add("console/fill/dead_tasks_s", rate, "tasks/s")
        print(f"  {n:,} dead letters by 2 workers × CONCURRENCY 32 (`permanent` tasks): {rate:,.0f} tasks/s",
              flush=True)

    def _settled(self, workers: list[Proc]) -> bool:
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"{w.name} exited ({w.popen.returncode}):\n{w.tail()}")
        return self.pending() == 0

    def pending(self) -> int | None:
        """The queue's pending entries (running attempts); None before a worker made the group."""
        try:
            return int(self.r.xpending(KEYS.stream(QUEUE), self.settings.consumer_group)["pending"])
        except redis.ResponseError:
            return None

    def running(self, m: Metrics) -> None:
        """CONSOLE_RUNNING `block` tasks held by 2 workers with as many slots: the pending entries."""
        n = CONSOLE_RUNNING
        self.enqueue(m, "running-to-be", {"type": "block", "timeout_s": 900}, n)
        settings = dataclasses.replace(self.settings, concurrency=n // 2)
        self.blockers = self.stack.workers_with(settings, 2, "console-block")
        wait_for(lambda: (self.pending() or 0) >= n, 60, f"{n:,} running tasks", interval=0.1)
        print(f"  {n:,} running (`block` tasks, 2 workers × CONCURRENCY {n // 2})", flush=True)

    def check(self, m: Metrics, overview: dict[str, Any]) -> None:
        """The overview's counts against what was put there (dead letters: DEAD_MAX trims approximately)."""
        counts = overview["counts"]
        want = {"queued": self.n, "scheduled": self.scheduled_n, "running": CONSOLE_RUNNING, "dead": self.dead_n}
        for state, n in want.items():
            m.add(f"console/count/{state}", counts.get(state), "tasks")
        if counts != want:
            m.errors.append(f"console: overview counts {counts}, want {want}")

    def release(self, admin: Admin) -> None:
        """Pause the queue (the freed slots must not start the queued tasks), end every `block`
        task (one RELEASE item each), then stop their workers."""
        if not self.blockers:
            return
        admin.pause(QUEUE, "bench")
        self.r.rpush(RELEASE, *["go"] * CONSOLE_RUNNING)
        try:
            wait_for(lambda: self._settled(self.blockers), 30, "the blocked tasks to finish", interval=0.1)
        finally:
            for w in self.blockers:
                w.stop()
            self.blockers = []


def sample_ids(admin: Admin) -> dict[str, str]:
    """A queued and a dead task (with its error, traceback and history) for Admin.task."""
    out = {}
    for state in ("queued", "dead"):
        rows = admin.tasks(QUEUE, state, limit=1)["tasks"]
        if rows:
            out[state] = str(rows[0]["id"])
    return out


def measure(admin: Admin, r: redis.Redis, m: Metrics, scale: str, ids: dict[str, str]) -> None:
    """CONSOLE_CALLS timed calls of each read (after one untimed call): wall time median and p99,
    this thread's CPU p99, and Valkey's own time per call (INFO commandstats, mean; it includes
    the few background commands of the workers holding the running tasks)."""
    for name, call in operations(admin, m, scale, ids):
        first = call()
        rows = first.get("tasks") if isinstance(first, dict) else None
        if rows is not None:
            m.add(f"console/{scale}/{name}/rows", len(rows), "rows")
        before = redis_usec(r)
        with GcPauses() as gc_pauses:
            times, cpu = timed(call, CONSOLE_CALLS)
        m.add(f"console/{scale}/{name}/gc_full_ms", gc_pauses.ms, "ms")
        m.add(f"console/{scale}/{name}/redis_ms", (redis_usec(r) - before) / 1000 / CONSOLE_CALLS, "ms")
        m.add(f"console/{scale}/{name}/median_ms", statistics.median(times), "ms")
        m.add(f"console/{scale}/{name}/p99_ms", pct(times, 99), "ms")
        m.add(f"console/{scale}/{name}/cpu_p99_ms", pct(cpu, 99), "ms")
    print(f"  {scale}: timed {CONSOLE_CALLS} calls of each Admin read", flush=True)


def operations(admin: Admin, m: Metrics, scale: str, ids: dict[str, str]) -> list[tuple[str, Callable[[], Any]]]:
    """(metric name, call) of every read the console makes: overviews, each state's first page at
    limit 50 and 200 and its deep page (CONSOLE_DEEP_PAGES next_cursor hops in, or as deep as the
    state goes), one task's detail."""
    ops: list[tuple[str, Callable[[], Any]]] = [
        ("overview", lambda: admin.overview(QUEUE)),
        ("overviews", admin.overviews),
    ]
    for state in STATES:
        for limit in (50, 200):
            ops.append((f"tasks/{state}/{limit}", partial(admin.tasks, QUEUE, state, limit=limit)))
        hops, cursor = deep_cursor(admin, state)
        if cursor is not None:
            m.add(f"console/{scale}/tasks/{state}/deep/pages_in", hops, "pages")
            ops.append((f"tasks/{state}/deep", partial(admin.tasks, QUEUE, state, cursor=cursor, limit=50)))
    for kind, task_id in ids.items():
        ops.append((f"task/{kind}", partial(admin.task, task_id)))
    return ops


def deep_cursor(admin: Admin, state: str) -> tuple[int, str | None]:
    """(pages skipped, cursor) of the page CONSOLE_DEEP_PAGES pages of 50 in, or of the state's
    last page with rows (a full last page still hands out a cursor, to an empty page)."""
    hops, cursor = 0, None
    while hops < CONSOLE_DEEP_PAGES:
        page = admin.tasks(QUEUE, state, cursor=cursor, limit=50)
        following = page["next_cursor"]
        if following is None or not admin.tasks(QUEUE, state, cursor=following, limit=1)["tasks"]:
            break
        hops, cursor = hops + 1, following
    return hops, cursor


class GcPauses:
    """Wall time (ms) of the full (generation 2) garbage collections in this process while in
    the block: a single call's outlier is often one of them, not Redis or the page."""

    def __init__(self) -> None:
        self.ms, self._t = 0.0, 0.0

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.ms += (time.perf_counter() - self._t) * 1000

    def __enter__(self) -> GcPauses:
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._on_gc)


def redis_usec(r: redis.Redis) -> int:
    """Microseconds Valkey has spent executing commands since its last CONFIG RESETSTAT."""
    return sum(int(stats["usec"]) for stats in r.info("commandstats").values())


def timed(call: Callable[[], Any], n: int) -> tuple[list[float], list[float]]:
    """Wall time of each call (ms), and this thread's CPU time in it: on a busy host the gap
    between the two is time spent waiting for a core or for Redis, not the console's work."""
    wall, cpu = [], []
    for _ in range(n):
        t, c = time.perf_counter(), time.thread_time()
        call()
        wall.append((time.perf_counter() - t) * 1000)
        cpu.append((time.thread_time() - c) * 1000)
    return wall, cpu


class ConsoleWeb:
    """`taskbus serve console` (WEB_WORKERS=1, one ADMIN_KEYS key) on a free port, timed from
    one keep-alive client: GET /api/queues and the queued tasks' first page, alternately."""

    PATHS = ("/api/queues", f"/api/queues/{QUEUE}/tasks?state=queued")

    def __init__(self, stack: Stack, settings: Settings) -> None:
        port, key = free_port(), secrets.token_urlsafe(24)
        settings = dataclasses.replace(settings, console_port=port, web_workers=1)
        env = {**stack.env(settings), "ADMIN_KEYS": f"bench:{key}"}  # a custom field: stack.env leaves it out
        log = stack.run_dir / f"taskbus-console-{time.monotonic_ns()}.log"
        self.proc = Proc("taskbus-console", [*taskbus_executable(), "serve", "console"], env, log)
        self.port, self.headers = port, {"Authorization": f"Bearer {key}"}
        stack.wait_http(self.proc, f"http://127.0.0.1:{port}")
        self.label = describe_server(self.proc)

    def calls(self, m: Metrics, scale: str) -> None:
        """CONSOLE_HTTP_CALLS requests, half on each path; client-side latency per path."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        times: dict[str, list[float]] = {p: [] for p in self.PATHS}
        try:
            for i in range(CONSOLE_HTTP_CALLS):
                path = self.PATHS[i % 2]
                t = time.perf_counter()
                conn.request("GET", path, headers=self.headers)
                resp = conn.getresponse()
                body = resp.read()
                times[path].append((time.perf_counter() - t) * 1000)
                if resp.status != 200:
                    raise RuntimeError(f"console GET {path}: {resp.status} {body[:300]!r}")
                json.loads(body)
        finally:
            conn.close()
        for path, name in zip(self.PATHS, ("queues", "tasks_queued")):
            m.add(f"console/{scale}/http/{name}/median_ms", statistics.median(times[path]), "ms", self.label)
            m.add(f"console/{scale}/http/{name}/p99_ms", pct(times[path], 99), "ms", self.label)
        print(f"  {scale}: {CONSOLE_HTTP_CALLS} console GETs over HTTP ({self.label})", flush=True)

    def rss(self, m: Metrics, when: str) -> None:
        """RSS of the console's whole process tree (MiB)."""
        total = 0
        for p in self.proc.tree():
            try:
                total += p.memory_info().rss
            except psutil.Error:  # a process that just exited holds no memory
                pass
        m.add(f"console/rss/{when}_mb", total / MIB, "MiB", self.label)
        print(f"  console RSS ({when}): {total / MIB:.1f} MiB", flush=True)
