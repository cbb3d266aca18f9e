"""The fault scenarios. Each takes a scratch directory and `full` (the `make chaos` size;
otherwise the short version `make test` runs), injects its faults while work flows, checks
the invariants (`Oracle.check`, through `Cluster.check`) and returns one line of figures.

Sleeps here schedule faults (kill a worker 0.5-1.5 s from now); they never stand in for
synchronisation, which goes through `wait_until` and the oracle."""

from __future__ import annotations

import functools
import json
import random
import shutil
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from chaos.cluster import Cluster
from chaos.cluster_failover import cluster_failover, cluster_failover_control
from chaos.oracle import InvariantBroken, task_key
from chaos.proxy import FaultProxy
from testkit.procs import wait_until
from testkit.signing import sign_stripe

Figures = dict[str, Any]


def _background(fn: Callable[[], Any]) -> threading.Thread:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised by join()
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def _join(thread: threading.Thread, timeout: float = 300) -> None:
    thread.join(timeout)
    if thread.is_alive():
        raise InvariantBroken("the load generator did not finish")
    if thread.errors:  # type: ignore[attr-defined]
        raise thread.errors[0]  # type: ignore[attr-defined]


def kill_workers(root: Path, full: bool, channel: str = "redis") -> Figures:
    """A random worker SIGKILLed every 0.5-1.5 s and restarted, while tasks flow."""
    n, kills, ms = (20_000, 10, 5) if full else (600, 3, 40)
    c = Cluster.start(root, channel=channel)
    try:
        for _ in range(3):
            c.start_worker()
        c.oracle.start_monitor()
        # a Kafka enqueue waits for the broker's ack: more clients keep the load ahead of the kills
        threads = 32 if channel == "kafka" else 8
        load = _background(lambda: c.enqueue(n, payload={"ms": ms}, threads=threads))
        for _ in range(kills):
            if channel == "kafka":
                # kill a worker that holds partitions, once the last kill's rebalance is over:
                # a worker between assignments runs nothing, and killing it would test nothing
                wait_until(lambda: _holders(c), timeout=30, message="a worker holding partitions")
                time.sleep(random.uniform(0.2, 0.6))
                victim = random.choice(_holders(c) or c.live_workers())
            else:
                time.sleep(random.uniform(0.5, 1.5))
                victim = random.choice(c.live_workers())
            c.fault("SIGKILL")
            victim.kill()
            c.start_worker()
        _join(load)
        return c.check()
    finally:
        c.close()


def rolling_sigterm(root: Path, full: bool, channel: str = "redis") -> Figures:
    """Every worker SIGTERMed in turn and replaced, 3 rounds: a graceful stop duplicates nothing."""
    n, ms = (6_000, 5) if full else (600, 20)
    c = Cluster.start(root, channel=channel)
    try:
        for _ in range(3):
            c.start_worker()
        c.oracle.start_monitor()
        load = _background(lambda: c.enqueue(n, payload={"ms": ms}, threads=4))
        # Kafka's short version does one round: each membership change costs a rebalance of seconds
        for _ in range(3 if full or channel == "redis" else 1):
            for worker in list(c.live_workers()):
                wait_until(lambda: "worker starting" in worker.output(), timeout=20, message="worker up")
                if channel == "kafka":
                    # a readiness-gated rollout, one membership change at a time: tansu 0.6 never
                    # finishes a rebalance that a join and a leave overlap (see the README)
                    _rebalanced(c, {worker.popen.pid: 0})
                    before = {pid: n for pid, n in _assignments(c).items() if pid != worker.popen.pid}
                c.signal_worker(worker, signal.SIGTERM)
                if worker.wait(20) != 0:
                    raise InvariantBroken(f"a worker exited {worker.popen.returncode} after SIGTERM")
                if channel == "kafka":
                    _rebalanced(c, before)
                    before = _assignments(c)
                replacement = c.start_worker()
                if channel == "kafka":
                    _rebalanced(c, {**before, replacement.popen.pid: 0})
        _join(load)
        return c.check(max_duplicates=0)
    finally:
        c.close()


def _holders(c: Cluster) -> list[Any]:
    """Live workers holding partitions now (Kafka): assigned more often than revoked."""
    return [
        w
        for w in c.live_workers()
        if w.output().count("partitions assigned") > w.output().count("partitions revoked")
    ]


def _assignments(c: Cluster) -> dict[int, int]:
    """Per live worker (pid), the partition assignments it has logged so far (Kafka)."""
    return {w.popen.pid: w.output().count("partitions assigned") for w in c.live_workers()}


def _rebalanced(c: Cluster, before: dict[int, int]) -> None:
    """Wait until each worker in `before` logged an assignment after its count there."""
    wait_until(
        lambda: all(n > before[pid] for pid, n in _assignments(c).items() if pid in before),
        timeout=30,
        message="partitions reassigned",
    )


def redis_restart(root: Path, full: bool) -> Figures:
    """Redis SIGKILLed and restarted (AOF, fsync every second) twice during a run: 0 lost.
    Then the control: without persistence the data is gone and workers must say so loudly.

    Redis answers writes it holds back while the disk is busy with the previous fsync, so its
    crash may lose them: ENQUEUE_FSYNC keeps every 202 on disk; a lost outcome only reruns
    its task (the terminal status a reader saw reverts, counted in `terminal_reverted`)."""
    n, ms = (6_000, 2) if full else (600, 10)
    c = Cluster.start(root, appendonly=True, enqueue_fsync=True)
    try:
        for _ in range(2):
            c.start_worker()
        c.oracle.start_monitor()
        # each 202 waits for Redis's next fsync (about 0.1 s): many clients share each one
        load = _background(lambda: c.enqueue(n, payload={"ms": ms}, threads=32, tolerate_errors=True))
        for _ in range(2):
            time.sleep(random.uniform(0.3, 0.8))
            c.fault("redis SIGKILL")
            c.server.kill()
            time.sleep(0.5)  # the outage
            c.server.start()
        _join(load)
        figures = c.check(reverts_allowed=True)
    finally:
        c.close()
    control = Cluster.start(root / "control", appendonly=False)
    try:
        worker = control.start_worker()
        control.enqueue(20, payload={"ms": 1})
        control.oracle.wait_all_terminal(30)
        control.server.kill()
        control.server.start()
        wait_until(
            lambda: "Redis lost its data" in worker.output(),
            timeout=20,
            message="the worker reporting the lost consumer group",
        )
        health = httpx.get(control.functions.enqueue + "/healthz")
        if health.status_code != 503 or health.json()["error"]["code"] != "data_lost":
            raise InvariantBroken(f"/healthz did not report the lost group: {health.status_code} {health.text}")
    finally:
        control.close()
    return {**figures, "control": "lost group reported"}


def network_faults(root: Path, full: bool) -> Figures:
    """Worker<->Redis through a fault proxy: 100 ms latency, a blackhole, connection resets."""
    n, blackhole_s, lease_s = (2_400, 10.0, 10.0) if full else (200, 2.0, 4.0)
    c = Cluster.start(root, lease_s=lease_s)
    proxy = FaultProxy(c.server.port)
    c.redis_url_for_workers = proxy.url
    try:
        for _ in range(2):
            c.start_worker()
        c.oracle.start_monitor()
        proxy.latency_s = 0.1
        c.enqueue(n // 2, payload={"ms": 5})
        wait_until(lambda: c.oracle.backlog() == (0, 0), timeout=120, message="drained under latency")
        proxy.latency_s = 0.0
        c.fault("blackhole")
        proxy.blackhole = True
        c.enqueue(n // 4, payload={"ms": 5})
        time.sleep(blackhole_s)
        proxy.blackhole = False
        healed = time.monotonic()
        before = c.oracle.terminal_count()
        wait_until(lambda: c.oracle.terminal_count() > before, timeout=10, message="work resuming after the blackhole")
        resume_s = time.monotonic() - healed
        for _ in range(3):
            c.fault("reset")
            proxy.reset_all()
            c.enqueue(n // 12, payload={"ms": 5})
        figures = c.check(max_duplicates=0)
        spurious = sum(w.output().count("lease lost") for w in c.workers)
        if spurious:
            for w in c.workers:
                print(
                    "\n".join(
                        line
                        for line in w.output().splitlines()
                        if "lease lost" in line or "unavailable" in line or "error" in line
                    )[:6000]
                )
            raise InvariantBroken(f"{spurious} spurious lease losses")
        if resume_s > 5:
            raise InvariantBroken(f"work resumed {resume_s:.1f} s after healing (limit 5 s)")
        return {**figures, "resume_s": round(resume_s, 2)}
    finally:
        c.close()


def slow_and_paused(root: Path, full: bool) -> Figures:
    """Tasks 3x the lease with a second worker waiting: one execution each (heartbeats).
    Then a worker SIGSTOPped past its lease: its late write is refused, the reclaimer's stands."""
    lease = 1.0
    c = Cluster.start(root, lease_s=lease, concurrency=4)
    try:
        first = c.start_worker()
        c.start_worker()
        c.oracle.start_monitor()
        c.enqueue(8 if full else 4, payload={"ms": 3 * lease * 1000})
        c.oracle.wait_all_terminal(60)
        paused = first
        ids = c.enqueue(1, payload={"ms": 1500})
        wait_until(lambda: ids[0] in c.oracle.executions()[0], timeout=10, message="slow task started")
        owner = paused if paused.log.read_text().count(ids[0]) else c.workers[1]
        c.fault("SIGSTOP")
        owner.signal(signal.SIGSTOP)
        wait_until(lambda: c.oracle.executions()[0][ids[0]] >= 2, timeout=20, message="reclaimer started the task")
        c.oracle.wait_all_terminal(30)
        owner.signal(signal.SIGCONT)
        wait_until(lambda: "outcome refused" in owner.output(), timeout=20, message="late write refused")
        return {**c.check(), "late_write": "refused"}
    finally:
        c.close()


def poison(root: Path, full: bool) -> Figures:
    """Tasks that kill their worker (os._exit) or hang, among innocent ones: dead-lettered after
    max_attempts deliveries, no innocent task in the dead-letter stream."""
    n = 2_000 if full else 200
    c = Cluster.start(root, default_timeout_s=1.0)
    try:
        for _ in range(2):
            c.start_worker()
        c.oracle.start_monitor()
        bad = set(c.enqueue(3, type_="poison.exit", max_attempts=2))
        bad |= set(c.enqueue(2, type_="poison.hang", max_attempts=2))
        c.enqueue(n, payload={"ms": 2})

        def supervise() -> bool:  # what a process manager does: replace workers that died
            for w in c.workers:
                if w.popen.poll() is not None and not getattr(w, "replaced", False):
                    w.replaced = True  # type: ignore[attr-defined]
                    c.fault("worker died")
                    c.start_worker()
            return c.oracle.backlog() == (0, 0) and len(c.live_workers()) > 0

        wait_until(supervise, timeout=120, interval=0.1, message="all delivered, poison dead-lettered")
        return c.check(poison=bad, recovery_limit_s=60)
    finally:
        c.close()


def enqueue_killed(root: Path, full: bool, channel: str = "redis") -> Figures:
    """The enqueue function SIGKILLed mid-request under load: every 202 received runs (on Kafka,
    tasks recorded but never produced are re-published from the outbox)."""
    n = 4_000 if full else 800
    c = Cluster.start(root, channel=channel)
    try:
        c.start_worker()
        c.oracle.start_monitor()
        load = _background(lambda: c.enqueue(n, payload={"ms": 1}, threads=8, tolerate_errors=True))
        for _ in range(2):
            time.sleep(random.uniform(0.2, 0.5))
            c.kill_function("enqueue")
        _join(load)
        figures = c.check()  # on Kafka this waits for the outbox to empty too
        republished = sum(
            json.loads(line)["tasks"]
            for w in c.workers
            for line in w.output().splitlines()
            if "re-publishing tasks never published or never started" in line
        )
        return {**figures, "republished_from_outbox": republished} if channel == "kafka" else figures
    finally:
        c.close()


def status_killed(root: Path, full: bool) -> Figures:
    """The status function SIGKILLed twice while long-polls wait on it: reading never changes a
    task, so the work is untouched, and a client that retries its long-poll gets the result."""
    n = 2_000 if full else 300
    c = Cluster.start(root)
    try:
        c.start_worker()
        c.oracle.start_monitor()
        c.enqueue(n, payload={"ms": 2}, threads=8)
        slow = c.enqueue(16, payload={"ms": 2000}, threads=4)  # long-polls still waiting when it dies
        waited: list[str] = []
        cut: list[str] = []  # long-polls the kills cut off (the client reconnected)

        def long_poll(task_id: str) -> None:
            """A client's loop: wait for the result, reconnecting when the server goes away."""
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                try:
                    url = c.functions.status + f"/tasks/{task_id}"
                    task = httpx.get(url, params={"wait": 5}, timeout=10).json()
                    if task["status"] in ("succeeded", "failed"):
                        waited.append(task["status"])
                        return
                except (httpx.HTTPError, ValueError):
                    cut.append(task_id)
                    time.sleep(0.1)  # the server is restarting: a client's back-off
            raise InvariantBroken(f"long-poll of {task_id} never got a terminal status")

        pollers = [_background(lambda t=t: long_poll(t)) for t in slow]
        for _ in range(2):
            time.sleep(random.uniform(0.2, 0.5))
            c.kill_function("status")
        for poller in pollers:
            _join(poller, 90)
        if waited != ["succeeded"] * len(pollers):
            raise InvariantBroken(f"long-polls ended with {waited}")
        if not cut:
            raise InvariantBroken("no long-poll was waiting when the status function died: the scenario tested nothing")
        return {**c.check(max_duplicates=0), "long_polls_answered": len(waited), "long_polls_cut": len(set(cut))}
    finally:
        c.close()


def clock_skew(root: Path, full: bool) -> Figures:
    """Functions 10 min behind, workers 10 min ahead (libfaketime): scheduling uses Redis TIME,
    so delays, retries and leases are unchanged; webhook timestamps from the real clock fall
    outside the skewed function's tolerance and are refused."""
    if not shutil.which("faketime"):
        raise InvariantBroken("faketime is not installed (Debian package faketime; make test installs it)")
    n = 2_000 if full else 200
    secret = "chaos-stripe-secret"
    c = Cluster.start(
        root,
        function_wrapper=("faketime", "-f", "-600s"),
        function_env={"WEBHOOK_SOURCES": "stripe", "WEBHOOK_STRIPE_SECRET": secret, "WEBHOOK_STRIPE_QUEUE": "chaos"},
    )
    c.oracle.worker_skew_ms = 600_000  # the workers' execution logs are stamped by their skewed clock
    try:
        for _ in range(2):
            c.start_worker(wrapper=("faketime", "-f", "+600s"))
        c.oracle.start_monitor()
        began = time.time()
        delayed = c.enqueue(20, payload={"ms": 1, "delay": True}, threads=2, delay_s=1.0)
        c.enqueue(n, payload={"ms": 2})
        c.check()
        created = [int(c.r.hget(task_key(c.settings, t), "started_ms") or 0) for t in delayed]
        early = [ms for ms in created if ms / 1000 < began + 0.9]
        if early:
            raise InvariantBroken(f"{len(early)} delayed tasks started before their 1 s delay")
        url = c.functions.enqueue + "/hooks/stripe"
        for skew, expected in ((0, 401), (-600, 202)):
            body = json.dumps({"id": f"evt_{skew}", "type": "invoice.paid"}).encode()
            reply = httpx.post(
                url,
                content=body,
                headers={"Content-Type": "application/json", **sign_stripe(secret, body, int(time.time()) + skew)},
            )
            if reply.status_code != expected:
                raise InvariantBroken(f"stripe delivery stamped {skew:+} s: {reply.status_code}, expected {expected}")
            if expected == 202:
                c.oracle.ack(reply.json()["id"])
        return {**c.check(), "skew_s": 600, "stale_signature": "refused"}
    finally:
        c.close()


SCENARIOS: dict[str, Callable[[Path, bool], Figures]] = {
    "kill_workers": kill_workers,
    "rolling_sigterm": rolling_sigterm,
    "redis_restart": redis_restart,
    "network_faults": network_faults,
    "slow_and_paused": slow_and_paused,
    "poison": poison,
    "enqueue_killed": enqueue_killed,
    "clock_skew": clock_skew,
    "status_killed": status_killed,
    # the same faults with Kafka as the channel
    "kafka_kill_workers": functools.partial(kill_workers, channel="kafka"),
    "kafka_rolling_sigterm": functools.partial(rolling_sigterm, channel="kafka"),
    "kafka_enqueue_killed": functools.partial(enqueue_killed, channel="kafka"),
    # a master of a 3+3 Redis Cluster SIGKILLed (issue 15), and the control that loses tasks
    "cluster_failover": cluster_failover,
    "cluster_failover_control": cluster_failover_control,
}
