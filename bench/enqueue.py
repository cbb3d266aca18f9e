"""Section 2, enqueue: Python Store.enqueue one at a time and batched, then HTTP POST /tasks on the
real enqueue function against the blog design's app, at several connection counts."""

from __future__ import annotations

import dataclasses
import functools
import http.client
import json
import sys
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import procs
from bench.config import BODY, HTTP_LEVELS, QUEUE, Config
from bench.drain import prequeue
from bench.load import Load
from bench.metrics import Metrics
from bench.procs import BIN, Proc
from bench.stack import WEB_WORKERS, Stack, Store, describe_server, enqueue_targets, free_port
from bench.systems import taskbus_one
from taskbus.task import TaskSpec


def run_enqueue(stack: Stack, cfg: Config, m: Metrics, load: Load | None) -> None:
    python_batched(stack, cfg, m)
    assert load is not None
    run_http(stack, cfg, m, load)


def python_batched(stack: Stack, cfg: Config, m: Metrics) -> None:
    """Store's batch API, if it has one, at cfg.batch tasks per call (and one at a time too when
    no drain ran: the drains' pre-queues measure that otherwise)."""
    store = Store(stack.settings())
    if "drain" not in cfg.only:
        for _ in range(cfg.rounds):
            stack.flush()
            rate = prequeue(functools.partial(taskbus_one, stack), None, cfg.enqueue_sample, cfg.enqueue_sample)
            m.add("enqueue/python1/taskbus", rate, "tasks/s")
    key = "enqueue/python_batch/taskbus"
    found = batch_method(store, cfg.batch)
    if found is None:
        m.na(key, "tasks/s", "Store has no batch API (enqueue_many/enqueue_batch)")
        return
    method, batch = found
    calls = cfg.batched_total // cfg.batch
    for _ in range(cfg.rounds):
        stack.flush()
        t = time.perf_counter()
        for _ in range(calls):
            method(batch)
        m.add(key, calls * len(batch) / (time.perf_counter() - t), "tasks/s")
        queued = stack.r.xlen(store.keys.stream(QUEUE))
        if queued != calls * len(batch):
            m.errors.append(f"Store.{method.__name__}: {queued} stream entries after {calls * len(batch)} tasks")
    store.client.close()
    stack.flush()


def batch_method(store: Store, size: int) -> tuple[Callable[[list[Any]], Any], list[Any]] | None:
    """Store's batch enqueue and a batch of `size` echo tasks it accepts (called once to find out:
    a list of specs, or of (spec, idempotency key) pairs); None if Store has no batch API."""
    method = next((getattr(store, name) for name in ("enqueue_many", "enqueue_batch") if hasattr(store, name)), None)
    if method is None:
        return None
    spec = TaskSpec(type="echo", payload={"n": 1}, queue=QUEUE)
    batch: list[Any] = [spec] * size
    try:
        method(batch)
    except (TypeError, ValueError):
        batch = [(spec, None)] * size
        method(batch)
    return method, batch


def start_blog_app(stack: Stack) -> tuple[Proc, str]:
    """The blog design's enqueue app (FastAPI on uvicorn × 2 workers); returns it and its base URL."""
    port = free_port()
    argv = [str(BIN / "uvicorn"), "bench.peers.blog_app:app", "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--workers", "2", "--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
    return stack.spawn("blog-app", argv), f"http://127.0.0.1:{port}"


PEERS = Path(__file__).resolve().parent / "peers"


def gunicorn_common(port: int) -> list[str]:
    return [
        sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(WEB_WORKERS),
        "--keep-alive", "5", "--no-control-socket", "--log-level", "warning",
    ]


def start_ff_flask(stack: Stack) -> tuple[Proc, str]:
    """The bare functions-framework Flask function (one SET): gunicorn gthread × 2, ENQUEUE_THREADS
    threads as taskbus's enqueue function has today."""
    port = free_port()
    argv = gunicorn_common(port) + ["--worker-class", "gthread", "--threads", str(stack.settings().enqueue_threads)]
    argv.append(f"functions_framework:create_app(target='set_one', source={str(PEERS / 'ff_flask.py')!r})")
    return stack.spawn("ff-flask", argv), f"http://127.0.0.1:{port}"


def start_ff_asgi(stack: Stack) -> tuple[Proc, str]:
    """The bare functions-framework ASGI function (one SET): gunicorn with uvicorn workers × 2."""
    port = free_port()
    argv = gunicorn_common(port) + ["--worker-class", "uvicorn_worker.UvicornWorker"]
    argv.append(f"functions_framework.aio:create_asgi_app(target='set_one', source={str(PEERS / 'ff_asgi.py')!r})")
    return stack.spawn("ff-asgi", argv), f"http://127.0.0.1:{port}"


@dataclasses.dataclass
class Target:
    name: str  # metric key part: http/<name>/c<conns>
    label: str
    url: str
    proc: Proc


def start_servers(stack: Stack, m: Metrics) -> list[Target]:
    """Every server of the table, started and answering: each taskbus enqueue target that
    `taskbus serve` offers (`Stack.enqueue_targets`), the two bare functions-framework
    functions, the blog app. A server that does not start is left out (and named in the errors)."""
    out: list[Target] = []
    for name, target, flags in enqueue_targets():
        proc, base, _ = stack.taskbus_function(target, *flags)
        label = f"taskbus `serve {' '.join((target, *flags))}` ({describe_server(proc)})"
        out.append(Target(name, label, base + "/tasks", proc))
    peers = (
        ("ff_asgi", "bare ff ASGI fn, 1 SET (gunicorn+uvicorn ×2)", start_ff_asgi, "/"),
        ("ff_flask", "bare ff Flask fn, 1 SET (gunicorn gthread ×2)", start_ff_flask, "/"),
        ("blog", "blog app (FastAPI, uvicorn ×2)", start_blog_app, "/enqueue/"),
    )
    for name, label, start, path in peers:
        proc, base = start(stack)
        try:
            stack.wait_http(proc, base)
        except RuntimeError as exc:  # the other rows still count
            m.errors.append(f"enqueue: {name} did not start: {exc}")
            proc.stop()
            continue
        out.append(Target(name, label, base + path, proc))
    return out


def run_http(stack: Stack, cfg: Config, m: Metrics, load: Load) -> None:
    """Every connection level against every server, round-robin, every round; the batch route
    at c=16 on the first taskbus target if it exists."""
    servers: list[Target] = []
    try:
        servers = start_servers(stack, m)
        first = servers[0]
        batch = probe_batch(first.url.removesuffix("/tasks"), cfg.batch, m)
        for t in servers:  # warm every server (imports, pools, caches)
            load.run(t.url, BODY, 16, 1)
        stack.flush()
        level = HttpLevels(cfg, m, load).run
        for rnd in range(cfg.rounds):
            for conns in HTTP_LEVELS:
                for t in servers:
                    level(f"http/{t.name}/c{conns}", t.url, BODY, conns, rnd, 1, t.proc, t.label)
            if batch is not None:
                label = f"POST /tasks/batch ({cfg.batch}/request), server of the first taskbus row"
                level("http/taskbus_batch/c16", first.url + "/batch", batch, 16, rnd, cfg.batch, first.proc, label)
            stack.flush()
        if batch is None:
            m.na("http/taskbus_batch/c16", "tasks/s", "POST /tasks/batch answers 404")
    finally:
        for t in servers:
            t.proc.stop()


@dataclasses.dataclass
class HttpLevels:
    """Runs load levels against one server at a time and records what each measured."""

    cfg: Config
    m: Metrics
    load: Load

    def run(
        self, key: str, url: str, body: str, conns: int, rnd: int, per_request: int, server: Proc, label: str = ""
    ) -> None:
        """One level: throughput, latency and the server's CPU per request (its whole process tree)."""
        m = self.m
        print(f"  http round {rnd + 1}/{self.cfg.rounds}: {url} c={conns}", flush=True)
        tree = server.tree()
        cpu0 = procs.cpu_seconds(tree)
        r = self.load.run(url, body, conns, self.cfg.http_s)
        cpu1 = procs.cpu_seconds(tree)
        cpu_ms = (sum(cpu1.values()) - sum(cpu0.get(pid, 0.0) for pid in cpu1)) * 1000
        m.add(key + "/server_cpu_ms", cpu_ms / max(1, r["requests"]), "ms/request")
        if r["status_errors"] or r["socket_errors"]:
            m.errors.append(
                f"{key} round {rnd + 1}: {r['status_errors']} non-2xx, "
                f"{r['socket_errors']} socket errors of {r['requests']} requests"
            )
        print(
            f"    {r['rps']:.0f} req/s, p50 {r['p50_us'] / 1000:.2f} ms, p99 {r['p99_us'] / 1000:.2f} ms, "
            f"server CPU {cpu_ms / max(1, r['requests']):.3f} ms/request",
            flush=True,
        )
        m.add(key, r["rps"] * per_request, "tasks/s", label)
        m.add(key + "/p50_ms", r["p50_us"] / 1000, "ms")
        m.add(key + "/p99_ms", r["p99_us"] / 1000, "ms")


def probe_batch(base: str, size: int, m: Metrics) -> str | None:
    """The body shape POST /tasks/batch accepts, or None when the route does not exist."""
    item = json.loads(BODY)
    parts = urllib.parse.urlsplit(base)
    for shape in ({"tasks": [item] * size}, [item] * size):
        body = json.dumps(shape, separators=(",", ":"))
        c = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        c.request("POST", "/tasks/batch", body, {"Content-Type": "application/json"})
        resp = c.getresponse()
        text = resp.read()
        c.close()
        if resp.status == 404:
            print("  POST /tasks/batch: 404, n/a", flush=True)
            return None
        if 200 <= resp.status < 300:
            results = json.loads(text).get("results") if text.startswith(b"{") else None
            if isinstance(results, list) and any("id" not in x for x in results):
                last = f"{resp.status} with refused items: {text[:200]!r}"
                continue
            print(f"  POST /tasks/batch accepts {type(shape).__name__} bodies", flush=True)
            return body
        last = f"{resp.status} {text[:200]!r}"
    m.errors.append(f"POST /tasks/batch exists but refused both body shapes: {last}")
    return None
