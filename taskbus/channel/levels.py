"""Task priorities on Redis Streams: one stream per priority level of a queue.

The default level (5) is the queue's own stream, so a queue nobody gives a priority to has
exactly today's keys and reads. Other levels get `{q}:stream:p<N>` (same consumer group), and
the enqueue records the level in the queue's set of levels in use. A worker looks at that set
on its periodic loop (`refresh`, never per read): while it is empty for every queue, the read
path is the plain XREADGROUP; otherwise `take.lua` picks across the levels by virtual deadline
(bounded starvation, see the script's header).

A delivery from a level stream names its level in its entry (`<stream id>@<level>`; the
default level's entries are the plain stream id): the entry is what the worker keys its
attempts by and hands back to start, finish, heartbeat and release, so every one of them finds
the entry's own stream, and equal ids of two level streams never collide.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import redis

from taskbus.channel import Delivery
from taskbus.channel.outages import Outages
from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.state.scripts import Scripts
from taskbus.task import DEFAULT_PRIORITY, PRIORITIES, queue_of

REFRESH_S = 1.0  # how stale a worker's view of its queues' levels may be: the longest a first
#                  non-default task waits to be seen by a worker that read only the default stream
T = TypeVar("T")


def entry_name(level: int, entry_id: str) -> str:
    """The delivery entry of stream entry `entry_id` of `level`."""
    return entry_id if level == DEFAULT_PRIORITY else f"{entry_id}@{level}"


def split_entry(entry: str) -> tuple[int, str]:
    """(level, stream entry id) of a delivery entry."""
    entry_id, sep, level = entry.partition("@")
    return (int(level), entry_id) if sep else (DEFAULT_PRIORITY, entry_id)


def by_level(items: Iterable[T], entry_of: Callable[[T], str]) -> dict[int, list[tuple[int, T]]]:
    """Items grouped by their entry's level, each with its position in `items` (to answer in order)."""
    groups: dict[int, list[tuple[int, T]]] = {}
    for index, item in enumerate(items):
        groups.setdefault(split_entry(entry_of(item))[0], []).append((index, item))
    return groups


def delivery(queue: str, level: int, entry_id: str, fields: dict[str, str]) -> Delivery:
    """A Delivery of one stream entry; its task id is None unless it is a well-formed id of `queue`."""
    task_id = fields.get("id", "")
    ok = queue_of(task_id) == queue
    return Delivery(queue, entry_name(level, entry_id), task_id if ok else None, fields)


class Levels:
    """Which levels each of a worker's queues has in use, and the reads across them."""

    def __init__(self, settings: Settings, consumer: str, client: redis.Redis, scripts: Scripts,
                 outages: Outages | None = None) -> None:
        self.settings = settings
        self.outages = outages or Outages(per_queue=False)
        self.consumer = consumer
        self.group = settings.consumer_group
        self.keys = Keys(settings.key_prefix)
        self.client = client
        self.scripts = scripts
        self.max_delay_ms = int(settings.priority_max_delay_s * 1000)
        self._active: dict[str, tuple[int, ...]] = {}  # queue -> its non-default levels in use
        self._grouped: set[str] = set()  # level streams whose consumer group this worker made sure of
        self._next_refresh = 0.0

    def reset(self) -> None:
        """After a lost group: make sure of every level stream's group again, now."""
        self._grouped.clear()
        self._next_refresh = 0.0

    def refresh(self) -> None:
        """Every REFRESH_S, one pipelined `levels.lua` per queue (which also forgets levels whose
        streams are empty); the group of a level seen for the first time is created at id 0,
        like the queue's own stream's, so its entries enqueued before are read."""
        now = time.monotonic()
        if now < self._next_refresh:
            return
        self._next_refresh = now + REFRESH_S
        queues = self.outages.live(self.settings.queues)
        calls: list[tuple[list[str], list[Any]]] = [([self.keys.levels(queue), *self.all_streams(queue)], [])
                                                    for queue in queues]
        if self.outages.per_queue:  # a cluster: one call per queue, so a failed master costs only its queues
            replies: dict[str, Any] = {}
            for queue, call in zip(queues, calls):
                with self.outages.guard(queue):
                    replies[queue] = self.scripts.run_many(self.scripts.levels, [call], fsync=False, wait_ms=0)[0]
        else:
            replies = dict(zip(queues, self.scripts.run_many(self.scripts.levels, calls, fsync=False, wait_ms=0)))
        for queue, kept in replies.items():
            levels = tuple(sorted((int(level) for level in kept), reverse=True))
            for level in levels:
                self._ensure_group(self.keys.level_stream(queue, level))
            self._active[queue] = levels

    def _ensure_group(self, stream: str) -> None:
        if stream in self._grouped:
            return
        try:
            self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._grouped.add(stream)

    def any(self) -> bool:
        return any(self._active.values())

    def of(self, queue: str) -> tuple[int, ...]:
        """The levels a worker reads of `queue`, highest first (the default level always)."""
        return tuple(sorted({DEFAULT_PRIORITY, *self._active.get(queue, ())}, reverse=True))

    def stream(self, queue: str, entry: str) -> str:
        """The stream a delivery entry of `queue` lives in."""
        return self.keys.level_stream(queue, split_entry(entry)[0])

    def all_streams(self, queue: str) -> list[str]:
        """The streams of levels 0-9, in order (promote.lua and levels.lua take them all)."""
        return [self.keys.level_stream(queue, level) for level in PRIORITIES]

    def take(self, queues: list[str], count: int) -> list[Delivery]:
        """Up to `count` new deliveries, each queue's levels by virtual deadline (`take.lua`),
        without waiting."""
        found: list[Delivery] = []
        for queue in queues:
            if len(found) >= count:
                break
            found += self._take(queue, count - len(found))
        return found

    def wait(self, queues: list[str], block_ms: int) -> list[Delivery]:
        """When `take` found nothing: one blocking XREADGROUP over every level stream (COUNT 1
        each) to wake up on the next entry (standalone Redis only: the streams of several queues
        in one command are CROSSSLOT on a cluster)."""
        streams = {self.keys.level_stream(q, level): (q, level) for q in queues for level in self.of(q)}
        reply: Any = self.client.xreadgroup(self.group, self.consumer, dict.fromkeys(streams, ">"), count=1,
                                            block=block_ms)
        return [delivery(*streams[name], entry, fields) for name, entries in (reply or []) for entry, fields in entries]

    def _take(self, queue: str, count: int) -> list[Delivery]:
        levels = self.of(queue)
        if len(levels) == 1:  # no other level in use: the plain read, without waiting
            stream = self.keys.stream(queue)
            reply: Any = self.client.xreadgroup(self.group, self.consumer, {stream: ">"}, count=count)
            return [delivery(queue, DEFAULT_PRIORITY, e, f) for _, entries in (reply or []) for e, f in entries]
        keys = [self.keys.level_stream(queue, level) for level in levels]
        args: list[Any] = [self.group, self.consumer, count, self.max_delay_ms, *levels]
        rows: Any = self.scripts.take(keys=keys, args=args, client=self.client)
        return [delivery(queue, int(level), entry, _fields(flat)) for level, entry, flat in rows]


def _fields(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2]))
