"""The queue overview, read in three pipelined rounds of O(1) commands per queue (no scan of
tasks; a fourth, `level_round`, only while some queue has priority levels in use), and the
per-queue counters' ring of 10-second buckets (written by lib.lua `flush_tally`)."""

from __future__ import annotations

import dataclasses
from typing import Any

import redis

from taskbus import codec
from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.task import DEFAULT_PRIORITY, iso, queue_of

BUCKET_MS = 10_000
SLOTS = 361  # an hour of buckets and the current one
CHART_BUCKETS = 90  # the live chart: 15 minutes
LETTERS = (("s", "succeeded"), ("f", "failed"), ("c", "cancelled"))


def server_ms(client: redis.Redis) -> int:
    """Redis's clock in ms: the one clock the scripts stamp everything with."""
    seconds, micros = client.time()
    return int(seconds) * 1000 + int(micros) // 1000


def first_round(pipe: Any, keys: Keys, settings: Settings, queue: str) -> None:
    stream = keys.stream(queue)
    pipe.xlen(stream)
    pipe.xinfo_groups(stream)
    pipe.xpending(stream, settings.consumer_group)
    pipe.zcard(keys.delayed(queue))
    pipe.xlen(keys.dead(queue))
    pipe.get(keys.paused(queue))
    pipe.hgetall(keys.stats(queue))
    pipe.hgetall(keys.workers(queue))
    pipe.zcard(keys.outbox(queue))
    pipe.zcard(keys.throttled(queue))  # waiting for a concurrency slot (flow control)
    pipe.smembers(keys.levels(queue))


def level_round(pipe: Any, keys: Keys, settings: Settings, queue: str, levels: list[int]) -> None:
    """Only for a queue with priority levels in use: the first round's stream counts of each
    level's stream (see channel/levels.py)."""
    for level in levels:
        stream = keys.level_stream(queue, level)
        pipe.xlen(stream)
        pipe.xinfo_groups(stream)
        pipe.xpending(stream, settings.consumer_group)


@dataclasses.dataclass
class Head:
    """One queue's first-round replies, and what the next rounds find."""

    length: int
    last_delivered: str | None  # None: no consumer group yet (every entry is queued)
    pending: int
    oldest_pending: str | None
    scheduled: int
    dead: int
    paused: dict[str, Any] | None
    counters: dict[str, str]
    workers: dict[str, str]
    outbox: int
    throttled: int
    levels: list[int] = dataclasses.field(default_factory=list)  # non-default priority levels in use
    streams: list[tuple[str | None, str | None, int]] = dataclasses.field(default_factory=list)  # per other
    #   level: its last delivered and oldest pending entries, its level
    oldest_queued_ms: int | None = None
    running_task: str | None = None
    oldest_started_ms: int | None = None

    @classmethod
    def of(cls, r: list[Any], settings: Settings) -> Head:
        groups = r[1] if isinstance(r[1], list) else []
        group = next((g for g in groups if g.get("name") == settings.consumer_group), None)
        summary = r[2] if isinstance(r[2], dict) else {}
        paused = _json_object(r[5])
        return cls(
            length=_count(r[0]), last_delivered=group["last-delivered-id"] if group else None,
            pending=int(summary.get("pending") or 0), oldest_pending=summary.get("min"),
            scheduled=_count(r[3]), dead=_count(r[4]), paused=paused if r[5] is not None else None,
            counters=r[6] if isinstance(r[6], dict) else {}, workers=r[7] if isinstance(r[7], dict) else {},
            outbox=_count(r[8]), throttled=_count(r[9]),
            levels=sorted(int(n) for n in (r[10] if isinstance(r[10], set | list) else [])),
        )

    def take_levels(self, r: list[Any], settings: Settings) -> None:
        """Add each level stream's counts (three replies per level, `level_round`'s) to the queue's."""
        for i, level in enumerate(self.levels):
            other = Head.of([*r[3 * i:3 * i + 3], 0, 0, None, {}, {}, 0, 0, []], settings)
            self.length += other.length
            self.pending += other.pending
            self.streams.append((other.last_delivered, other.oldest_pending, level))

    def second_round(self, pipe: Any, keys: Keys, queue: str) -> None:
        """The head of each level's stream (the default's first), then the oldest pending entry
        of them all."""
        streams = [(self.last_delivered, self.oldest_pending, DEFAULT_PRIORITY), *self.streams]
        for last_delivered, _, level in streams:
            start = f"({last_delivered}" if last_delivered else "-"
            pipe.xrange(keys.level_stream(queue, level), start, "+", count=1)
        pending = [(_entry_ms(oldest), oldest, level) for _, oldest, level in streams if oldest]
        if pending:
            _, oldest, level = min(pending)
            pipe.xrange(keys.level_stream(queue, level), oldest, oldest)

    def take_second(self, replies: list[Any]) -> None:
        heads = [_entry_ms(r[0][0]) for r in replies[:len(self.streams) + 1] if isinstance(r, list) and r]
        if heads:
            self.oldest_queued_ms = min(heads)
        running = replies[len(self.streams) + 1:]
        if running and isinstance(running[0], list) and running[0]:
            task_id = running[0][0][1].get("id", "")
            self.running_task = task_id if queue_of(task_id) else None

    def third_round(self, pipe: Any, keys: Keys) -> None:
        if self.running_task:
            pipe.hget(keys.task(self.running_task), "started_ms")

    def take_third(self, replies: list[Any]) -> None:
        if replies and isinstance(replies[0], str) and replies[0].isdigit():
            self.oldest_started_ms = int(replies[0])

    def overview(self, queue: str, now_ms: int, settings: Settings, live_ms: int, kafka: bool) -> dict[str, Any]:
        live = live_workers(self.workers, now_ms - live_ms)
        if kafka:  # no pending list: queued = recorded and not started, running = what live workers hold
            queued, running = self.outbox, sum(int(w.get("info", {}).get("in_flight") or 0) for w in live)
        else:
            queued, running = max(0, self.length - self.pending), self.pending
        buckets = series(self.counters, now_ms)
        return {
            "queue": queue,
            "paused": self.paused is not None,
            "paused_by": (self.paused or {}).get("by"),
            "paused_at": iso(str((self.paused or {}).get("at_ms") or "")) if self.paused else None,
            "counts": {"queued": queued, "scheduled": self.scheduled, "throttled": self.throttled,
                       "running": running, "dead": self.dead},
            "oldest_age_s": {
                "queued": _age(now_ms, self.oldest_queued_ms) if queued and not kafka else None,
                "running": _age(now_ms, self.oldest_started_ms) if running and not kafka else None,
            },
            "last_hour": {name: sum(b[name] for b in buckets) for _, name in LETTERS},
            "per_minute": per_minute(buckets, now_ms),
            "per_10s": buckets[-CHART_BUCKETS:],
            "dead_letters": {"cap": settings.dead_max, "ttl_s": settings.dead_ttl_s,
                             "evicted": int(self.counters.get("evicted") or 0)},
            "workers": len(live),
        }


def series(counters: dict[str, str], now_ms: int) -> list[dict[str, Any]]:
    """The last hour's 10-second buckets, oldest first (a slot holding an older bucket reads 0)."""
    current = now_ms // BUCKET_MS
    out = []
    for bucket in range(current - SLOTS + 1, current + 1):
        slot = bucket % SLOTS
        fresh = counters.get(f"t{slot}") == str(bucket)
        entry: dict[str, Any] = {"at": iso(str(bucket * BUCKET_MS))}
        for letter, name in LETTERS:
            entry[name] = int(counters.get(f"{letter}{slot}") or 0) if fresh else 0
        out.append(entry)
    return out


def per_minute(buckets: list[dict[str, Any]], now_ms: int) -> list[dict[str, Any]]:
    """The last 15 whole minutes and the current one's part, from the 10-second buckets."""
    minute_ms = 60_000
    first = (now_ms // minute_ms - 14) * minute_ms
    minutes: dict[int, dict[str, Any]] = {}
    for m in range(15):
        start = first + m * minute_ms
        minutes[start] = {"at": iso(str(start)), **{name: 0 for _, name in LETTERS}}
    current = now_ms // BUCKET_MS
    for offset, b in enumerate(reversed(buckets)):
        start = ((current - offset) * BUCKET_MS // minute_ms) * minute_ms
        if start in minutes:
            for _, name in LETTERS:
                minutes[start][name] += b[name]
    return list(minutes.values())


def live_workers(workers: dict[str, str], since_ms: int) -> list[dict[str, Any]]:
    """The workers hash's entries seen since `since_ms`, decoded (consumer name under `consumer`)."""
    out = []
    for consumer, raw in workers.items():
        w = _json_object(raw)
        if w and int(w.get("seen_ms") or 0) >= since_ms:
            out.append({**w, "consumer": consumer})
    return out


def _entry_ms(entry: str) -> int:
    return int(entry.split("-")[0])


def _age(now_ms: int, then_ms: int | None) -> float | None:
    return None if then_ms is None else round(max(0, now_ms - then_ms) / 1000, 3)


def _count(reply: Any) -> int:
    return int(reply) if isinstance(reply, int) else 0


def _json_object(raw: Any) -> dict[str, Any]:
    try:
        value = codec.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
