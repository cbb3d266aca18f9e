"""A small real cluster for the fault scenarios: Valkey (and, for CHANNEL=kafka, a tansu
broker), the two functions under gunicorn, worker processes, the faults injected into them,
and the load of acknowledged tasks. What happened is the `Oracle`'s to judge."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import redis

from chaos.oracle import InvariantBroken, Oracle
from local.embedded import EmbeddedKafka, EmbeddedServer
from taskbus.settings import Settings
from testkit.functions import FunctionPair, start_functions
from testkit.procs import Proc, spawn
from testkit.rcluster import ValkeyCluster
from testkit.settings import kafka_settings

BASE = dict(
    key_prefix="chaos",
    queues=("chaos",),
    lease_s=2.0,
    grace_s=8.0,
    block_ms=200,
    backoff_base_s=0.05,
    backoff_max_s=0.5,
    concurrency=8,
    handlers="chaos.handlers",
    enqueue_threads=16,
)
KAFKA = dict(
    kafka_partitions=6,
    kafka_produce_timeout_s=5.0,
    kafka_outbox_age_s=6.0,
    kafka_redeliver_s=20.0,  # a record the broker lost is published again within the drain wait
    kafka_max_poll_interval_ms=8000,
)


@dataclasses.dataclass
class Cluster:
    root: Path
    settings: Settings
    server: EmbeddedServer | ValkeyCluster  # a standalone Valkey, or a 3+3 cluster (`on_redis_cluster`)
    functions: FunctionPair
    oracle: Oracle
    broker: EmbeddedKafka | None = None  # CHANNEL=kafka: the tansu broker
    redis_url_for_workers: str = ""  # workers reach Redis here (a fault proxy) if set
    workers: list[Proc] = dataclasses.field(default_factory=list)

    @classmethod
    def start(
        cls,
        root: Path,
        appendonly: bool = True,
        function_wrapper: tuple[str, ...] = (),
        function_env: dict[str, str] | None = None,
        channel: str = "redis",
        **changes: Any,
    ) -> Cluster:
        root.mkdir(parents=True, exist_ok=True)
        server = EmbeddedServer(root / "valkey", appendonly=appendonly)
        server.start()
        broker = None
        if channel == "kafka":
            broker = EmbeddedKafka(root / "kafka")
            broker.start()
            changes = kafka_settings(broker, **{**KAFKA, **changes})
        settings = Settings(redis_url=server.url, **{**BASE, **changes})  # type: ignore[arg-type]
        functions = start_functions(settings, root, env=function_env, wrapper=function_wrapper)

        def client() -> redis.Redis:
            return redis.Redis.from_url(server.url, decode_responses=True, socket_timeout=5)

        oracle = Oracle(root, functions.settings, client, kafka=broker is not None)
        return cls(root, functions.settings, server, functions, oracle, broker)

    @classmethod
    def on_redis_cluster(cls, root: Path, queues: tuple[str, ...], **changes: Any) -> Cluster:
        """The same on a Redis Cluster of 3 masters + 3 replicas (REDIS_CLUSTER=true); `queues`
        chosen to live on different masters (`testkit.rcluster.queues_on_masters`)."""
        root.mkdir(parents=True, exist_ok=True)
        valkey = ValkeyCluster(root / "rcluster")
        valkey.start()
        settings = Settings(redis_url=valkey.url, redis_cluster=True,  # type: ignore[arg-type]
                            **{**BASE, "queues": queues, **changes})
        functions = start_functions(settings, root)
        shared = redis.RedisCluster.from_url(valkey.url, decode_responses=True, socket_timeout=5)
        oracle = Oracle(root, functions.settings, lambda: shared)  # one client: its slot map follows failovers
        return cls(root, functions.settings, valkey, functions, oracle)

    # -- processes and faults -----------------------------------------------------------------

    def start_worker(self, wrapper: tuple[str, ...] = (), **changes: Any) -> Proc:
        settings = dataclasses.replace(self.settings, **changes)
        if self.redis_url_for_workers:
            settings = dataclasses.replace(settings, redis_url=self.redis_url_for_workers)
        proc = spawn("worker", settings, self.root, wrapper, CHAOS_DIR=str(self.root))
        self.workers.append(proc)
        return proc

    def live_workers(self) -> list[Proc]:
        return [w for w in self.workers if w.alive()]

    def fault(self, kind: str) -> None:
        """A fault about to be injected: the oracle times its recovery."""
        self.oracle.fault(kind)

    def signal_worker(self, proc: Proc, signum: int) -> None:
        self.fault(signal.Signals(signum).name)
        proc.signal(signum)

    def kill_function(self, name: str) -> None:
        """SIGKILL an HTTP function mid-load and start it again, as its platform would."""
        self.fault(f"{name} SIGKILL")
        self.functions.restart(name)

    def check(self, **bounds: Any) -> dict[str, Any]:
        """`Oracle.check`: every invariant, and the figures measured."""
        return self.oracle.check(**bounds)

    def close(self) -> None:
        self.oracle.stop()
        for proc in self.workers:
            proc.kill()
        self.functions.stop(timeout=5)
        if isinstance(self.server, ValkeyCluster):
            self.server.stop()
        else:
            self.server.kill()
        if self.broker is not None:
            self.broker.kill()

    @property
    def r(self) -> redis.Redis:
        return self.oracle.client()

    # -- load ---------------------------------------------------------------------------------

    def enqueue(
        self,
        n: int,
        type_: str = "work",
        payload: dict[str, Any] | None = None,
        threads: int = 8,
        max_attempts: int = 5,
        tolerate_errors: bool = False,
        delay_s: float = 0,
        queue: str = "",
        pace_s: float = 0,
    ) -> list[str]:
        """POST until n tasks are acknowledged on `queue` (default: the first), from `threads`
        clients, each pausing `pace_s` after a 202 (a load that lasts); every 202 goes into the oracle.

        With `tolerate_errors` a client behaves like a real one under a fault: a refused or cut
        request, or a 503, is retried after a short back-off, so the load outlives the fault
        instead of burning its requests against a restarting server."""
        body = {
            "type": type_,
            "queue": queue or self.settings.queues[0],
            "payload": payload or {},
            "max_attempts": max_attempts,
            "delay_s": delay_s,
        }
        limit_s = 60 + n / 50  # generous: this only stops a load against a server that never comes back
        deadline = time.monotonic() + limit_s

        def post(count: int) -> list[str]:
            got: list[str] = []
            with httpx.Client(timeout=10) as http:
                while len(got) < count:
                    if time.monotonic() > deadline:
                        raise InvariantBroken(f"enqueue acknowledged {len(got)} of {count} within {limit_s:.0f} s")
                    try:
                        reply = http.post(self.functions.enqueue + "/tasks", json=body)
                    except httpx.HTTPError:
                        if not tolerate_errors:
                            raise
                        time.sleep(0.05)  # the server is restarting: a client's back-off
                        continue
                    if reply.status_code == 202:
                        self.oracle.ack(reply.json()["id"])
                        got.append(reply.json()["id"])
                        time.sleep(pace_s)  # the load's shape (`pace_s` between a client's requests)
                    elif tolerate_errors and reply.status_code == 503:
                        time.sleep(0.05)
                    else:
                        raise InvariantBroken(f"enqueue answered {reply.status_code}: {reply.text[:200]}")
            return got

        shares = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]
        ids: list[str] = []
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for got in pool.map(post, [s for s in shares if s]):
                ids.extend(got)
        return ids
