"""A small real cluster (Valkey, the two functions under gunicorn, worker processes) with an
oracle: every task whose enqueue was acknowledged (202), every handler execution (from the
workers' execution logs), and a monitor of status transitions. `check()` verifies the
invariants after a scenario and returns its figures."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import random
import signal
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import redis

from local.embedded import EmbeddedKafka, EmbeddedServer, free_port
from taskbus.keys import Keys
from taskbus.settings import Settings
from tests.support import Proc, kafka_settings, spawn, start_function, stop, wait_until

TERMINAL = ("succeeded", "failed")


class InvariantBroken(AssertionError):
    pass


@dataclasses.dataclass
class Cluster:
    root: Path
    settings: Settings
    server: EmbeddedServer
    broker: EmbeddedKafka | None = None  # CHANNEL=kafka: the tansu broker
    redis_url_for_workers: str = ""
    worker_skew_ms: int = 0
    recoveries: list[float] = dataclasses.field(default_factory=list)
    _watchers: list[threading.Thread] = dataclasses.field(default_factory=list)
    workers: list[Proc] = dataclasses.field(default_factory=list)
    acked: set[str] = dataclasses.field(default_factory=set)
    faults: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    functions: dict[str, tuple[Proc, str]] = dataclasses.field(default_factory=dict)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    _monitor: dict[str, list[str]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)

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
            changes = kafka_settings(
                broker,
                kafka_partitions=6,
                kafka_produce_timeout_s=5.0,
                kafka_outbox_age_s=6.0,
                kafka_redeliver_s=20.0,  # a record the broker lost is published again within the drain wait
                kafka_max_poll_interval_ms=8000,
                **changes,
            )
        base = dict(
            redis_url=server.url,
            key_prefix="chaos",
            queues=("chaos",),
            enqueue_port=free_port(),
            status_port=free_port(),
            lease_s=2.0,
            grace_s=8.0,
            block_ms=200,
            backoff_base_s=0.05,
            backoff_max_s=0.5,
            concurrency=8,
            handlers="chaos.handlers",
            enqueue_threads=16,
        )
        base.update(changes)
        cluster = cls(root, Settings(**base), server, broker)  # type: ignore[arg-type]
        for name in ("enqueue", "status"):
            cluster.functions[name] = start_function(
                name, cluster.settings, root, function_wrapper, **(function_env or {})
            )
        return cluster

    # -- processes ----------------------------------------------------------------------

    def start_worker(self, wrapper: tuple[str, ...] = (), **changes: Any) -> Proc:
        settings = dataclasses.replace(self.settings, **changes)
        if self.redis_url_for_workers:
            settings = dataclasses.replace(settings, redis_url=self.redis_url_for_workers)
        proc = spawn("worker", settings, self.root, wrapper, CHAOS_DIR=str(self.root))
        self.workers.append(proc)
        return proc

    def live_workers(self) -> list[Proc]:
        return [w for w in self.workers if w.popen.poll() is None]

    def fault(self, kind: str) -> None:
        """Record a fault about to be injected, and time its recovery: how long until every entry
        pending at that moment (held by a worker, maybe the one about to die) is acknowledged."""
        struck = time.monotonic()
        self.faults.append((struck, kind))
        left = self._pending_ids() or set()

        def watch() -> None:
            while left and time.monotonic() - struck < 600:
                current = self._pending_ids()
                if current is not None:
                    left.intersection_update(current)
                if left:
                    time.sleep(0.1)  # polling Redis from the observer, not synchronising the system
            if not left:
                self.recoveries.append(time.monotonic() - struck)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        self._watchers.append(watcher)

    def _pending_ids(self) -> set[str] | None:
        """Ids in the consumer group's pending list (Kafka: tasks running), or None while Redis
        does not answer."""
        client = self.r
        try:
            if self.broker is not None:
                with self._lock:
                    ids = list(self.acked)
                pipe = client.pipeline(transaction=False)
                for task_id in ids:
                    pipe.hget(task_key(self.settings, task_id), "status")
                return {t for t, status in zip(ids, pipe.execute()) if status == "running"}
            stream = Keys(self.settings.key_prefix).stream(self.settings.queues[0])
            entries = client.xpending_range(stream, self.settings.consumer_group, "-", "+", 100_000)
        except redis.RedisError:
            return None
        return {e["message_id"] for e in entries}

    def kill_function(self, name: str) -> None:
        """SIGKILL an HTTP function mid-load and start it again, as its platform would."""
        proc, _ = self.functions[name]
        self.fault(f"{name} SIGKILL")
        proc.kill()
        self.functions[name] = start_function(name, self.settings, self.root)

    def close(self) -> None:
        self._stop.set()
        for proc in self.workers:
            proc.kill()
        for proc, _ in self.functions.values():
            stop(proc, timeout=5)
        self.server.kill()
        if self.broker is not None:
            self.broker.kill()

    @property
    def r(self) -> redis.Redis:
        return redis.Redis.from_url(self.server.url, decode_responses=True, socket_timeout=5)

    # -- load -----------------------------------------------------------------------------

    def enqueue(
        self,
        n: int,
        type_: str = "work",
        payload: dict[str, Any] | None = None,
        threads: int = 8,
        max_attempts: int = 5,
        tolerate_errors: bool = False,
        delay_s: float = 0,
    ) -> list[str]:
        """POST until n tasks are acknowledged, from `threads` clients; every 202 goes into the oracle.

        With `tolerate_errors` a client behaves like a real one under a fault: a refused or cut
        request, or a 503, is retried after a short back-off, so the load outlives the fault
        instead of burning its requests against a restarting server."""
        url = self.functions["enqueue"][1] + "/tasks"
        body = {
            "type": type_,
            "queue": self.settings.queues[0],
            "payload": payload or {},
            "max_attempts": max_attempts,
            "delay_s": delay_s,
        }
        ids: list[str] = []
        limit_s = 60 + n / 50  # generous: this only stops a load against a server that never comes back
        deadline = time.monotonic() + limit_s

        def post(count: int) -> list[str]:
            got: list[str] = []
            with httpx.Client(timeout=10) as http:
                while len(got) < count:
                    if time.monotonic() > deadline:
                        raise InvariantBroken(f"enqueue acknowledged {len(got)} of {count} within {limit_s:.0f} s")
                    try:
                        reply = http.post(url, json=body)
                    except httpx.HTTPError:
                        if not tolerate_errors:
                            raise
                        time.sleep(0.05)  # the server is restarting: a client's back-off
                        continue
                    if reply.status_code == 202:
                        task_id = reply.json()["id"]
                        with self._lock:
                            self.acked.add(task_id)
                        got.append(task_id)
                    elif tolerate_errors and reply.status_code == 503:
                        time.sleep(0.05)
                    else:
                        raise InvariantBroken(f"enqueue answered {reply.status_code}: {reply.text[:200]}")
            return got

        shares = [n // threads + (1 if i < n % threads else 0) for i in range(threads)]
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            for got in pool.map(post, [s for s in shares if s]):
                ids.extend(got)
        return ids

    def start_monitor(self, sample: int = 200) -> None:
        """Watch a sample of tasks' status from Redis and remember every change seen."""

        def watch() -> None:
            client = self.r
            while not self._stop.is_set():
                with self._lock:
                    ids = random.sample(sorted(self.acked), min(sample, len(self.acked)))
                try:
                    pipe = client.pipeline(transaction=False)
                    for task_id in ids:
                        pipe.hget(task_key(self.settings, task_id), "status")
                    for task_id, status in zip(ids, pipe.execute()):
                        seen = self._monitor[task_id]
                        if status and (not seen or seen[-1] != status):
                            seen.append(status)
                except redis.RedisError:
                    pass  # Redis faults are part of the scenario
                self._stop.wait(0.05)

        threading.Thread(target=watch, daemon=True).start()

    # -- oracle and invariants -----------------------------------------------------------

    def executions(self) -> tuple[Counter[str], dict[str, int]]:
        """Starts per task, and the time (ms) a handler first finished its work for it."""
        starts: Counter[str] = Counter()
        ends: dict[str, int] = {}
        for path in self.root.glob("exec-*.log"):
            for line in path.read_text().splitlines():
                parts = line.split()
                if len(parts) != 3:
                    continue  # a line cut short by SIGKILL
                kind, task_id, ms = parts
                if kind == "S":
                    starts[task_id] += 1
                else:
                    ends[task_id] = min(ends.get(task_id, int(ms)), int(ms))
        return starts, ends

    def backlog(self) -> tuple[int, int]:
        keys, queue = Keys(self.settings.key_prefix), self.settings.queues[0]
        stream = keys.stream(queue)
        client = self.r
        if self.broker is not None:  # records wait in Kafka; here only what waits to be published
            keys = Keys(self.settings.key_prefix)
            return int(client.zcard(keys.outbox(queue))) + int(client.zcard(keys.delayed(queue))), 0
        groups = client.xinfo_groups(stream) if client.exists(stream) else []
        group = next((g for g in groups if g["name"] == self.settings.consumer_group), None)
        if group is None and client.exists(stream):
            return int(client.xlen(stream)) + 1, 0  # no group yet (workers still connecting): not drained
        pending = int(group["pending"]) if group else 0
        delayed = client.zcard(keys.delayed(queue))
        return int(client.xlen(stream)) + int(delayed), int(pending)

    def wait_all_terminal(self, timeout: float) -> float:
        """Seconds from the last fault until every acked task is terminal and the backlog is 0."""
        client = self.r
        left: dict[str, Any] = {}  # what was still unfinished at the last look, for the failure

        def done() -> bool:
            with self._lock:
                ids = list(self.acked)
            pipe = client.pipeline(transaction=False)
            for task_id in ids:
                pipe.hget(task_key(self.settings, task_id), "status")
            try:
                statuses = pipe.execute()
                waiting = {t: s for t, s in zip(ids, statuses) if s not in TERMINAL}
                left.update(statuses=Counter(waiting.values()), sample=sorted(waiting)[:3], backlog=self.backlog())
                return not waiting and left["backlog"] == (0, 0)
            except redis.RedisError as exc:
                left["error"] = repr(exc)
                return False

        try:
            wait_until(done, timeout=timeout, interval=0.1, message="every acknowledged task terminal, backlog 0")
        except AssertionError as exc:
            raise InvariantBroken(f"{exc}; still unfinished: {left}") from None
        last_fault = max((t for t, _ in self.faults), default=time.monotonic())
        return max(0.0, time.monotonic() - last_fault)

    def check(
        self,
        poison: set[str] | None = None,
        max_duplicates: int | None = None,
        recovery_limit_s: float | None = None,
        timeout: float = 120,
        reverts_allowed: bool = False,
    ) -> dict[str, Any]:
        """Check every invariant. `reverts_allowed`: Redis itself crashed, and with `appendfsync
        everysec` it may lose its last writes, terminal ones included; such a task must still
        end terminal, written once, within the duplicate bound. The reverts are counted."""
        poison = poison or set()
        drain_s = self.wait_all_terminal(timeout)
        self._stop.set()
        for watcher in self._watchers:
            watcher.join(5)
        recovery_s = max(self.recoveries, default=0.0)
        limit = recovery_limit_s if recovery_limit_s is not None else self.settings.lease_s * 1.5 + 5
        if self.broker is not None and recovery_limit_s is None:  # the group first has to notice a dead member
            limit += self.settings.kafka_session_timeout_ms / 1000 * 1.5
        if recovery_s > limit:
            raise InvariantBroken(f"a fault took {recovery_s:.1f} s to recover from (limit {limit} s)")
        if len(self.recoveries) < len(self.faults):
            raise InvariantBroken(f"{len(self.faults) - len(self.recoveries)} faults never recovered")
        client = self.r
        ids = sorted(self.acked)
        pipe = client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hmget(task_key(self.settings, task_id), "status", "finished_ms")
            pipe.hget(task_key(self.settings, task_id), "terminal_writes")
        replies = pipe.execute()
        records = dict(zip(ids, replies[0::2]))
        terminal_writes = {t: int(n or 0) for t, n in zip(ids, replies[1::2])}
        starts, ends = self.executions()
        problems = []
        missing = [t for t, (status, _) in records.items() if status not in TERMINAL]
        if missing:
            problems.append(f"{len(missing)} acknowledged tasks not terminal, e.g. {missing[:3]}")
        twice = [t for t, n in terminal_writes.items() if n != 1]
        if twice:
            problems.append(f"{len(twice)} tasks with {set(terminal_writes[t] for t in twice)} terminal writes")
        failed = {t for t, (status, _) in records.items() if status == "failed"}
        if failed != poison:
            problems.append(
                f"failed tasks {len(failed)} != poison tasks {len(poison)}: "
                f"innocent {sorted(failed - poison)[:3]}, poison not failed {sorted(poison - failed)[:3]}"
            )
        dead_stream = Keys(self.settings.key_prefix).dead(self.settings.queues[0])
        dead = {fields.get("id") for _, fields in client.xrange(dead_stream)}
        if dead != poison:
            problems.append(f"dead-letter stream holds {len(dead)} tasks, expected the {len(poison)} poison tasks")
        early = [
            t
            for t, (status, fin) in records.items()
            if status == "succeeded" and (t not in ends or int(fin or 0) < ends[t] - self.worker_skew_ms)
        ]
        if early:
            problems.append(f"{len(early)} tasks succeeded before their handler finished, e.g. {early[:3]}")
        never_ran = [t for t, (status, _) in records.items() if status == "succeeded" and starts[t] == 0]
        if never_ran:
            problems.append(f"{len(never_ran)} tasks succeeded without an execution")
        duplicates = sum(max(0, starts[t] - 1) for t in ids if t not in poison)
        bound = 1 + len(self.faults)
        over = [t for t in ids if t not in poison and starts[t] > bound]
        if over:
            problems.append(f"{len(over)} tasks ran more than 1 + faults ({bound}) times")
        if max_duplicates is not None and duplicates > max_duplicates:
            problems.append(f"{duplicates} duplicate executions (allowed {max_duplicates})")
        backwards = [(t, seq) for t, seq in self._monitor.items() if _backwards(seq)]
        if backwards and not reverts_allowed:
            problems.append(f"status moved backwards for {len(backwards)} tasks, e.g. {backwards[:2]}")
        if problems:
            raise InvariantBroken("; ".join(problems))
        return {
            "tasks": len(ids),
            "faults": len(self.faults),
            "lost": 0,
            "duplicates": duplicates,
            "dead_lettered": len(dead),
            "max_recovery_s": round(recovery_s, 2),
            "drained_s_after_last_fault": round(drain_s, 2),
            "monitored": len(self._monitor),
            **({"terminal_reverted": len(backwards)} if reverts_allowed else {}),
        }

    def signal_worker(self, proc: Proc, signum: int) -> None:
        self.fault(signal.Signals(signum).name)
        proc.signal(signum)


def task_key(settings: Settings, task_id: str) -> str:
    return Keys(settings.key_prefix).task(task_id)


def _backwards(seq: list[str]) -> bool:
    """Once terminal, a status never changes."""
    for i, status in enumerate(seq):
        if status in TERMINAL and any(s != status for s in seq[i + 1 :]):
            return True
    return False
