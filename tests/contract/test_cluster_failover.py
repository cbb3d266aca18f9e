"""One worker serving three queues on three masters of the session's real Redis Cluster, while
one master is SIGKILLed: the other two queues keep finishing tasks through the ~3 s until its
replica is promoted (the worker backs off the dead master's queue alone), and that queue resumes
after the promotion."""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest
import redis

from taskbus.client import Client
from taskbus.errors import Unavailable
from taskbus.keys import Keys
from taskbus.settings import Settings
from testkit.procs import spawn, wait_until
from testkit.rcluster import ValkeyCluster

pytestmark = pytest.mark.xdist_group("cluster")


class Feed:
    """Enqueues `echo` tasks on one queue from a thread, about 50 a second: the ids acknowledged,
    each with its enqueue time (monotonic)."""

    def __init__(self, settings: Settings, queue: str) -> None:
        self.settings, self.queue = settings, queue
        self.acked: list[tuple[float, str]] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with Client(self.settings) as client:
            while not self.stop.wait(0.02):  # a pace, not a synchronisation
                try:
                    self.acked.append((time.monotonic(), client.enqueue("echo", {}, queue=self.queue).id))
                except Unavailable:
                    continue

    def ids(self) -> list[str]:
        return [task_id for _, task_id in self.acked]


def _finished_ms(rc: redis.RedisCluster, keys: Keys, ids: list[str]) -> list[int | None]:
    pipe = rc.pipeline()
    for task_id in ids:
        pipe.hget(keys.task(task_id), "finished_ms")
    return [int(ms) if ms else None for ms in pipe.execute()]


def _longest_gap(times_ms: list[int], start_ms: float, end_ms: float) -> float:
    """The longest time (s) without a completion between `start_ms` and `end_ms`."""
    points = sorted([start_ms, end_ms, *(t for t in times_ms if start_ms < t < end_ms)])
    return max(b - a for a, b in zip(points, points[1:])) / 1000


@pytest.mark.timeout(120)
def test_one_master_down_leaves_the_other_queues_flowing(valkey_cluster: ValkeyCluster, cl_settings: Settings,
                                                          cl_queues: list[str], rc: redis.RedisCluster,
                                                          tmp_path: Path) -> None:
    valkey_cluster.wait_healthy()
    # No ENQUEUE_REPLICAS: the promoted replica has no replica of its own until the victim is
    # restarted, so `WAIT 1` would refuse its queue's enqueues; this test is about the worker.
    settings = dataclasses.replace(cl_settings, key_prefix=f"{cl_settings.key_prefix}fo", enqueue_replicas=0)
    keys = Keys(settings.key_prefix)
    victim_queue, others = cl_queues[1], [cl_queues[0], cl_queues[2]]
    victim = valkey_cluster.master_of(keys.stream(victim_queue))
    assert all(valkey_cluster.master_of(keys.stream(q)) is not victim for q in others)
    worker = spawn("worker", settings, tmp_path)
    feeds = {q: Feed(settings, q) for q in cl_queues}
    try:
        wait_until(lambda: all(None not in _finished_ms(rc, keys, f.ids()[-5:]) and len(f.acked) >= 20
                               for f in feeds.values()), timeout=30, message="all three queues flowing", proc=worker)
        killed_ms, killed_at = time.time() * 1000, time.monotonic()
        valkey_cluster.kill(victim)
        wait_until(lambda: valkey_cluster.master_of(keys.stream(victim_queue)) is not victim, timeout=20,
                   message="replica promoted")
        promoted_s = time.monotonic() - killed_at
        promoted_ms = killed_ms + promoted_s * 1000
        after = feeds[victim_queue]
        wait_until(lambda: any(t > killed_at + promoted_s and _finished_ms(rc, keys, [i])[0]
                               for t, i in after.acked[-3:]), timeout=30, message="the victim's queue resumes",
                   proc=worker)
        resumed_s = time.monotonic() - killed_at
        for feed in feeds.values():
            feed.stop.set()
            feed.thread.join(10)
        for q in others:
            wait_until(lambda q=q: None not in _finished_ms(rc, keys, feeds[q].ids()), timeout=30,
                       message=f"every task of {q} finished", proc=worker)
        gaps = {q: _longest_gap([t for t in _finished_ms(rc, keys, feeds[q].ids()) if t],
                                killed_ms - 1000, promoted_ms + 1000) for q in others}
        print(f"\nmaster SIGKILLed: replica promoted after {promoted_s:.2f} s, its queue finished tasks again "
              f"after {resumed_s:.2f} s; longest gap between completions on the other masters' queues: "
              + ", ".join(f"{gap:.2f} s" for gap in gaps.values()))
        assert max(gaps.values()) < promoted_s / 2, "the other masters' queues keep finishing tasks"
    finally:
        for feed in feeds.values():
            feed.stop.set()
        worker.stop()
        if not victim.alive():
            valkey_cluster.restart(victim)  # it rejoins as a replica: the session's cluster stays 3+3
        valkey_cluster.wait_healthy()
