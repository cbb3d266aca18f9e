"""The Redis Cluster failover scenarios (issue 15): three queues on the three masters of a real
3+3 cluster, tasks enqueued over HTTP on all of them, one master SIGKILLed mid-flow and restarted
once its replica took over (it rejoins as that one's replica).

- `cluster_failover`, with ENQUEUE_REPLICAS=1: no acknowledged task lost, no terminal status
  written twice, the other two queues keep finishing tasks through the failover; the times of
  the promotion and of the victim queue's first completion after it are reported.
- `cluster_failover_control`, without ENQUEUE_REPLICAS and with the victim's replica frozen
  (SIGSTOP, behind a 32 MB write that fills its replication link): acknowledged tasks are lost
  on the failover, and the oracle must find and count them (acknowledged by a 202, absent from
  Redis after the drain); if it finds none, the figures say so.

Sleeps here schedule faults; synchronisation goes through `wait_until` and the oracle.
"""

from __future__ import annotations

import concurrent.futures
import time
from pathlib import Path
from typing import Any

from chaos.cluster import Cluster
from chaos.oracle import InvariantBroken, task_key
from taskbus.keys import Keys
from taskbus.task import queue_of
from testkit.procs import wait_until
from testkit.rcluster import Node, ValkeyCluster, queues_on_masters

Figures = dict[str, Any]
QUEUES = tuple(queues_on_masters("chaos", "cq"))  # one per master; the victim is the second (not the seed node)
BALLAST_BYTES = 32 << 20  # more than loopback's socket buffers: what follows it waits in the master
THAW_AFTER_S = 0.3  # the frozen replica wakes this long after its master's death, as in research §4


def cluster_failover(root: Path, full: bool) -> Figures:
    """ENQUEUE_REPLICAS=1: a master's SIGKILL loses nothing acknowledged."""
    n, ms, pace_s = (5_000, 5, 0.005) if full else (450, 20, 0.02)
    c = Cluster.on_redis_cluster(root, QUEUES, enqueue_replicas=1, redis_socket_timeout_s=2.0)
    try:
        with concurrent.futures.ThreadPoolExecutor(len(QUEUES)) as pool:
            loads = _start(c, pool, n, ms, pace_s)
            times, _ = _fail_over(c, n // 10)
            for load in loads:
                load.result(timeout=300)
        figures = c.check(reverts_allowed=True, recovery_limit_s=30)  # a lost finish is redone once
        figures.update(_flow(c, times))
        if max(figures["other_queues_longest_gap_s"]) >= times["promoted_s"] / 2:
            raise InvariantBroken(f"the other masters' queues stalled: {figures['other_queues_longest_gap_s']} s "
                                  f"without a completion (failover {times['promoted_s']:.2f} s): {figures}")
        return {**figures, **{k: v for k, v in times.items() if k != "killed_ms"}}
    finally:
        c.close()


def cluster_failover_control(root: Path, full: bool) -> Figures:
    """No ENQUEUE_REPLICAS, the replica frozen behind a large write: the loss is found and counted."""
    n, ms, pace_s = (3_000, 5, 0.005) if full else (450, 20, 0.02)
    c = Cluster.on_redis_cluster(root, QUEUES)
    try:
        with concurrent.futures.ThreadPoolExecutor(len(QUEUES)) as pool:
            loads = _start(c, pool, n, ms, pace_s)
            times, before = _fail_over(c, n // 10, lagging=True)
            for load in loads:
                load.result(timeout=300)
        c.oracle.wait_all_terminal(120, absent_ok=True)
        c.oracle.stop()
        lost = c.oracle.absent()
        unexplained = [t for t in lost if t in before or queue_of(t) != QUEUES[1]]
        if unexplained:  # only writes the frozen replica never had can be lost: else the check is wrong
            raise InvariantBroken(f"{len(unexplained)} lost tasks were not acknowledged on the failed master after "
                                  f"its replica froze, e.g. {unexplained[:3]}")
        starts, _ = c.oracle.executions()
        return {"tasks": len(c.oracle.acked), "acknowledged_lost": len(lost),
                "lost_sample": lost[:3],
                "loss_detected": bool(lost), "duplicates": sum(max(0, k - 1) for k in starts.values()),
                **{k: v for k, v in times.items() if k != "killed_ms"},
                **({} if lost else {"note": "nothing was lost in this run: the replica had every write"})}
    finally:
        c.close()


def _start(c: Cluster, pool: concurrent.futures.ThreadPoolExecutor, n: int, ms: int, pace_s: float) -> list[Any]:
    """Two workers, and `n` tasks spread over the queues, enqueued over HTTP (a 503 is retried)."""
    for _ in range(2):
        c.start_worker()
    c.oracle.start_monitor()
    shares = [n // len(QUEUES) + (1 if i < n % len(QUEUES) else 0) for i in range(len(QUEUES))]
    return [pool.submit(c.enqueue, share, payload={"ms": ms}, threads=2, tolerate_errors=True, queue=q, pace_s=pace_s)
            for q, share in zip(QUEUES, shares)]


def _fail_over(c: Cluster, after: int, lagging: bool = False) -> tuple[dict[str, float], set[str]]:
    """Once `after` tasks finished (the workers are in full flow), SIGKILL the victim queue's master (first freezing its
    replica behind a large write when `lagging`), wait for the promotion, restart it. Returns the
    times, and the tasks acknowledged before (none of which a freeze that follows can lose)."""
    valkey = c.server
    assert isinstance(valkey, ValkeyCluster)
    stream = Keys(c.settings.key_prefix).stream(QUEUES[1])
    master = valkey.master_of(stream)
    wait_until(lambda: c.oracle.terminal_count() >= after, timeout=120, interval=0.05, message="tasks finishing")
    replica, before = valkey.replica_of(master), set(c.oracle.acked_ids())
    if lagging:
        _freeze_behind_ballast(c, valkey, master, replica)
    frozen_acks = _acked_on(c, QUEUES[1]) - sum(1 for t in before if queue_of(t) == QUEUES[1])
    killed_ms, killed_at = time.time() * 1000, time.monotonic()
    c.fault("master SIGKILL")
    valkey.kill(master)
    if lagging:
        time.sleep(THAW_AFTER_S)  # scheduling the fault: the replica wakes after its master died
        valkey.freeze(replica, frozen=False)
    wait_until(lambda: valkey.master_of(stream) is not master, timeout=30, interval=0.05, message="replica promoted")
    promoted_s = time.monotonic() - killed_at
    valkey.restart(master)
    valkey.wait_healthy()
    times = {"killed_ms": killed_ms, "promoted_s": round(promoted_s, 2),
             "rejoined_s": round(time.monotonic() - killed_at, 2)}
    if lagging:
        times["acked_while_frozen"] = frozen_acks
    return times, before


def _freeze_behind_ballast(c: Cluster, valkey: ValkeyCluster, master: Node, replica: Node) -> None:
    """Freeze the replica, fill its replication link with one large write on the master, and let
    the victim queue's acknowledged tasks pile up behind it for up to a second (the replica must
    wake within the cluster's node timeout to be elected)."""
    valkey.freeze(replica)
    master.call("SET", f"{c.settings.key_prefix}:{{{QUEUES[1]}}}:ballast", b"x" * BALLAST_BYTES)
    before = _acked_on(c, QUEUES[1])
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline and _acked_on(c, QUEUES[1]) - before < 100:
        time.sleep(0.02)  # letting the load run into the lag; the deadline bounds the freeze


def _acked_on(c: Cluster, queue: str) -> int:
    return sum(1 for t in c.oracle.acked_ids() if queue_of(t) == queue)


def _flow(c: Cluster, times: dict[str, float]) -> Figures:
    """From the tasks' `finished_ms`: the longest time without a completion on each other queue
    from the kill to the promotion (or to that queue's last completion), and how long after the
    kill the victim queue finished a task again (its recovery time)."""
    client, ids = c.oracle.client(), sorted(c.oracle.acked)
    pipe = client.pipeline(transaction=False)
    for task_id in ids:
        pipe.hmget(task_key(c.settings, task_id), "created_ms", "finished_ms")
    created: dict[str, list[int]] = {q: [] for q in QUEUES}
    finished: dict[str, list[int]] = {q: [] for q in QUEUES}
    for task_id, (created_ms, finished_ms) in zip(ids, pipe.execute()):
        created[queue_of(task_id) or ""].append(int(created_ms))
        finished[queue_of(task_id) or ""].append(int(finished_ms))
    start = times["killed_ms"]
    end = start + times["promoted_s"] * 1000
    gaps = [_longest_gap(finished[q], start, end) for q in (QUEUES[0], QUEUES[2])]
    after = [t for t in finished[QUEUES[1]] if t > start]
    enqueue_gaps = [_longest_gap(created[q], start, end) for q in (QUEUES[0], QUEUES[2])]
    return {"other_queues_longest_gap_s": gaps, "other_queues_longest_enqueue_gap_s": enqueue_gaps,
            "victim_first_finish_s": round((min(after) - start) / 1000, 2) if after else None}


def _longest_gap(times_ms: list[int], start_ms: float, end_ms: float) -> float:
    end_ms = min(end_ms, max(times_ms, default=start_ms))
    points = sorted([start_ms, end_ms, *(t for t in times_ms if start_ms < t < end_ms)])
    return round(max((b - a for a, b in zip(points, points[1:])), default=0.0) / 1000, 2)
