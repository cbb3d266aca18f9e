"""The oracle of a chaos run: every task whose enqueue was acknowledged (202), every handler
execution (from the workers' execution logs, which survive Redis faults), a monitor of status
transitions, and each fault with the time it took to recover. `check()` verifies the
invariants after a scenario and returns the figures it measured."""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import redis
from redis.exceptions import RedisClusterException

from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.task import TERMINAL
from testkit.procs import wait_until


class InvariantBroken(AssertionError):
    pass


ERRORS = (redis.RedisError, RedisClusterException)  # Redis faults (a cluster client's are not all RedisErrors)


def task_key(settings: Settings, task_id: str) -> str:
    return Keys(settings.key_prefix).task(task_id)


def statuses(client: redis.Redis, settings: Settings, ids: Iterable[str]) -> dict[str, str | None]:
    """Each task's status, read in one round trip."""
    ids = list(ids)
    pipe = client.pipeline(transaction=False)
    for task_id in ids:
        pipe.hget(task_key(settings, task_id), "status")
    return dict(zip(ids, pipe.execute()))


@dataclasses.dataclass
class Oracle:
    root: Path  # where the workers write their execution logs
    settings: Settings
    client: Callable[[], redis.Redis]  # a fresh client of the cluster's Redis
    kafka: bool = False  # CHANNEL=kafka: records wait in the broker, not in a stream
    worker_skew_ms: int = 0  # the workers' clock runs this far ahead (their logs are stamped by it)
    acked: set[str] = dataclasses.field(default_factory=set)
    faults: list[tuple[float, str]] = dataclasses.field(default_factory=list)
    recoveries: list[float] = dataclasses.field(default_factory=list)
    _watchers: list[threading.Thread] = dataclasses.field(default_factory=list)
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    _monitor: dict[str, list[str]] = dataclasses.field(default_factory=lambda: defaultdict(list))
    _stop: threading.Event = dataclasses.field(default_factory=threading.Event)

    def ack(self, task_id: str) -> None:
        with self._lock:
            self.acked.add(task_id)

    def acked_ids(self) -> list[str]:
        with self._lock:
            return list(self.acked)

    def stop(self) -> None:
        self._stop.set()

    # -- faults -----------------------------------------------------------------------------

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
        """Entries in the queues' consumer groups' pending lists (Kafka: tasks running), or None
        while Redis does not answer."""
        try:
            if self.kafka:
                now = statuses(self.client(), self.settings, self.acked_ids())
                return {t for t, status in now.items() if status == "running"}
            keys, client = Keys(self.settings.key_prefix), self.client()
            return {f"{queue} {e['message_id']}" for queue in self.settings.queues
                    for e in client.xpending_range(keys.stream(queue), self.settings.consumer_group, "-", "+", 100_000)}
        except ERRORS:
            return None

    # -- observation ------------------------------------------------------------------------

    def start_monitor(self, sample: int = 200) -> None:
        """Watch a sample of tasks' status from Redis and remember every change seen."""

        def watch() -> None:
            client = self.client()
            while not self._stop.is_set():
                ids = self.acked_ids()
                watched = random.sample(ids, min(sample, len(ids)))
                try:
                    for task_id, status in statuses(client, self.settings, watched).items():
                        seen = self._monitor[task_id]
                        if status and (not seen or seen[-1] != status):
                            seen.append(status)
                except ERRORS:
                    pass  # Redis faults are part of the scenario
                self._stop.wait(0.05)

        threading.Thread(target=watch, daemon=True).start()

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
        """(entries waiting, entries delivered and not acknowledged) over the queues; Kafka: what
        waits to be published."""
        waiting, pending = zip(*(self._backlog(queue) for queue in self.settings.queues))
        return sum(waiting), sum(pending)

    def _backlog(self, queue: str) -> tuple[int, int]:
        keys = Keys(self.settings.key_prefix)
        stream = keys.stream(queue)
        client = self.client()
        if self.kafka:  # records wait in Kafka; here only what waits to be published
            return int(client.zcard(keys.outbox(queue))) + int(client.zcard(keys.delayed(queue))), 0
        groups = client.xinfo_groups(stream) if client.exists(stream) else []
        group = next((g for g in groups if g["name"] == self.settings.consumer_group), None)
        if group is None and client.exists(stream):
            return int(client.xlen(stream)) + 1, 0  # no group yet (workers still connecting): not drained
        pending = int(group["pending"]) if group else 0
        delayed = client.zcard(keys.delayed(queue))
        return int(client.xlen(stream)) + int(delayed), int(pending)

    def absent(self) -> list[str]:
        """Acknowledged tasks whose record Redis no longer has (lost by a failover)."""
        return sorted(t for t, s in statuses(self.client(), self.settings, self.acked_ids()).items() if s is None)

    def terminal_count(self) -> int:
        return sum(1 for s in statuses(self.client(), self.settings, self.acked_ids()).values() if s in TERMINAL)

    def wait_all_terminal(self, timeout: float, absent_ok: bool = False) -> float:
        """Seconds from the last fault until every acked task is terminal and the backlog is 0;
        `absent_ok`: or its record is gone (a failover lost it: `absent` counts those)."""
        client = self.client()
        left: dict[str, Any] = {}  # what was still unfinished at the last look, for the failure

        def done() -> bool:
            try:
                waiting = {t: s for t, s in statuses(client, self.settings, self.acked_ids()).items()
                           if s not in TERMINAL and not (absent_ok and s is None)}
                left.update(statuses=Counter(waiting.values()), sample=sorted(waiting)[:3], backlog=self.backlog())
                return not waiting and left["backlog"] == (0, 0)
            except ERRORS as exc:
                left["error"] = repr(exc)
                return False

        try:
            wait_until(done, timeout=timeout, interval=0.1, message="every acknowledged task terminal, backlog 0")
        except AssertionError as exc:
            raise InvariantBroken(f"{exc}; still unfinished: {left}") from None
        last_fault = max((t for t, _ in self.faults), default=time.monotonic())
        return max(0.0, time.monotonic() - last_fault)

    # -- the invariants -----------------------------------------------------------------------

    def check(
        self,
        poison: set[str] | None = None,
        max_duplicates: int | None = None,
        recovery_limit_s: float | None = None,
        timeout: float = 120,
        reverts_allowed: bool = False,
    ) -> dict[str, Any]:
        """Check every invariant; raise InvariantBroken naming each one broken. `reverts_allowed`:
        Redis itself crashed, and with `appendfsync everysec` it may lose its last writes, terminal
        ones included; such a task must still end terminal, written once, within the duplicate
        bound. The reverts are counted."""
        poison = poison or set()
        drain_s = self.wait_all_terminal(timeout)
        self.stop()
        for watcher in self._watchers:
            watcher.join(5)
        recovery_s = self._check_recoveries(recovery_limit_s)
        ids = sorted(self.acked)
        client = self.client()
        pipe = client.pipeline(transaction=False)
        for task_id in ids:
            pipe.hmget(task_key(self.settings, task_id), "status", "finished_ms")
            pipe.hget(task_key(self.settings, task_id), "terminal_writes")
        replies = pipe.execute()
        records: dict[str, list[Any]] = dict(zip(ids, replies[0::2]))
        terminal_writes = {t: int(n or 0) for t, n in zip(ids, replies[1::2])}
        keys = Keys(self.settings.key_prefix)
        dead = {fields.get("id") for queue in self.settings.queues for _, fields in client.xrange(keys.dead(queue))}
        lost = [t for t, (status, _) in records.items() if status not in TERMINAL]
        problems = [f"{len(lost)} acknowledged tasks not terminal, e.g. {lost[:3]}"] if lost else []
        problems += self._outcome_problems(records, terminal_writes, dead, poison)
        duplicates, found = self._execution_problems(records, poison, max_duplicates)
        problems += found
        backwards = [(t, seq) for t, seq in self._monitor.items() if _backwards(seq)]
        if backwards and not reverts_allowed:
            problems.append(f"status moved backwards for {len(backwards)} tasks, e.g. {backwards[:2]}")
        if problems:
            raise InvariantBroken("; ".join(problems))
        return {
            "tasks": len(ids),
            "faults": len(self.faults),
            "lost": len(lost),
            "duplicates": duplicates,
            "dead_lettered": len(dead),
            "max_recovery_s": round(recovery_s, 2),
            "drained_s_after_last_fault": round(drain_s, 2),
            "monitored": len(self._monitor),
            **({"terminal_reverted": len(backwards)} if reverts_allowed else {}),
        }

    def _check_recoveries(self, recovery_limit_s: float | None) -> float:
        """Every fault recovered, the slowest within the limit; the slowest recovery (s)."""
        recovery_s = max(self.recoveries, default=0.0)
        limit = recovery_limit_s if recovery_limit_s is not None else self.settings.lease_s * 1.5 + 5
        if self.kafka and recovery_limit_s is None:  # the group first has to notice a dead member
            limit += self.settings.kafka_session_timeout_ms / 1000 * 1.5
        if recovery_s > limit:
            raise InvariantBroken(f"a fault took {recovery_s:.1f} s to recover from (limit {limit} s)")
        if len(self.recoveries) < len(self.faults):
            raise InvariantBroken(f"{len(self.faults) - len(self.recoveries)} faults never recovered")
        return recovery_s

    @staticmethod
    def _outcome_problems(records: dict[str, list[Any]], terminal_writes: dict[str, int], dead: set[str | None],
                          poison: set[str]) -> list[str]:
        """Each terminal status written once; exactly the poison tasks failed and dead-lettered."""
        problems = []
        twice = [t for t, n in terminal_writes.items() if n != 1]
        if twice:
            problems.append(f"{len(twice)} tasks with {set(terminal_writes[t] for t in twice)} terminal writes")
        failed = {t for t, (status, _) in records.items() if status == "failed"}
        if failed != poison:
            problems.append(
                f"failed tasks {len(failed)} != poison tasks {len(poison)}: "
                f"innocent {sorted(failed - poison)[:3]}, poison not failed {sorted(poison - failed)[:3]}"
            )
        if dead != poison:
            problems.append(f"dead-letter stream holds {len(dead)} tasks, expected the {len(poison)} poison tasks")
        return problems

    def _execution_problems(self, records: dict[str, list[Any]], poison: set[str],
                            max_duplicates: int | None) -> tuple[int, list[str]]:
        """Success only after a handler finished; duplicates within bounds. (duplicates, problems)"""
        starts, ends = self.executions()
        problems = []
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
        innocent = [t for t in records if t not in poison]
        duplicates = sum(max(0, starts[t] - 1) for t in innocent)
        bound = 1 + len(self.faults)
        over = [t for t in innocent if starts[t] > bound]
        if over:
            problems.append(f"{len(over)} tasks ran more than 1 + faults ({bound}) times")
        if max_duplicates is not None and duplicates > max_duplicates:
            problems.append(f"{duplicates} duplicate executions (allowed {max_duplicates})")
        return duplicates, problems


def _backwards(seq: list[str]) -> bool:
    """Once terminal, a status never changes."""
    for i, status in enumerate(seq):
        if status in TERMINAL and any(s != status for s in seq[i + 1 :]):
            return True
    return False
