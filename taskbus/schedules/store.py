"""The schedules' Redis side: sync declarations, load what is stored, fire slots, heartbeat.

Only this module of the package talks to Redis, through the scripts `schedule_upsert.lua` and
`schedule_fire.lua` (their headers give the contract).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from taskbus import codec
from taskbus.errors import NotFound
from taskbus.keys import Keys
from taskbus.schedules.model import Schedule
from taskbus.schedules.slots import next_after, slot_task_id
from taskbus.settings import Settings
from taskbus.state.client import connect, unavailable_on_redis_errors
from taskbus.state.scripts import Scripts

log = logging.getLogger(__name__)

# How long the queue's scheduler heartbeat outlives the last loop that renewed it: slots due
# while no scheduler looked for longer than this count as missed (the misfire policy applies).
SEEN_TTL_MS = 3000
FIELDS = ("def", "version", "last_s", "last_task", "paused", "generation")  # what `load` reads


@dataclasses.dataclass
class Stored:
    """A schedule as Redis holds it, with where its slots stand (updated from each firing)."""

    schedule: Schedule
    version: str
    last_s: int
    last_task: str
    paused: bool = False
    generation: int = 0

    def view(self) -> dict[str, Any]:
        """The public JSON shape (the console API and `taskbus schedules list --json`)."""
        s = self.schedule
        return {"name": s.name, "queue": s.queue, "type": s.task_type, "cron": s.cron, "every_s": s.every_s,
                "tz": s.tz, "misfire": s.misfire, "max_catchup": s.max_catchup, "overlap": s.overlap,
                "paused": self.paused, "generation": self.generation, "last_slot_s": self.last_s,
                "last_task": self.last_task or None, "next_slot_s": next_after(s, self.last_s)}


@dataclasses.dataclass(frozen=True)
class Fired:
    verdict: str  # 'ok', 'stale' (reload the definition) or 'prev' (retry with `last_task`)
    now_ms: int
    last_s: int
    last_task: str
    ids: list[str]


class ScheduleStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.client = connect(settings)
        self.scripts = Scripts(self.client)

    def sync(self, schedules: Iterable[Schedule]) -> list[tuple[str, int]]:
        """Upsert each declaration (one pipelined round trip); per schedule (verdict, generation)."""
        calls = [
            ([self.keys.schedule(s.queue, s.name), self.keys.schedules(s.queue)], [s.name, s.version(), s.definition()])
            for s in schedules
        ]
        if not calls:
            return []
        with unavailable_on_redis_errors():
            replies = self.scripts.run_many(self.scripts.schedule_upsert, calls, fsync=False, wait_ms=0)
            self.client.sadd(self.keys.queue_index(), *{s.queue for s in schedules})
        return [(str(verdict), int(generation)) for verdict, generation in replies]

    def load(self, queues: Sequence[str]) -> list[Stored]:
        """Every stored schedule of `queues` (two round trips); an unreadable one is logged and left out."""
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for queue in queues:
                pipe.smembers(self.keys.schedules(queue))
            names = [(q, n) for q, members in zip(queues, pipe.execute()) for n in sorted(members)]
            pipe = self.client.pipeline(transaction=False)
            for queue, name in names:
                pipe.hmget(self.keys.schedule(queue, name), *FIELDS)
            rows = pipe.execute()
        found = []
        for (queue, name), (raw, version, last_s, last_task, paused, generation) in zip(names, rows):
            if raw is None:
                continue  # deleted since the SMEMBERS
            try:
                schedule = Schedule.from_definition(raw)
            except (ValueError, TypeError) as exc:
                log.error("schedule %s of queue %s is unreadable and is not fired: %s", name, queue, exc)
                continue
            found.append(Stored(schedule, version, int(last_s or 0), last_task or "", paused is not None,
                                int(generation or 0)))
        return found

    def fire(self, stored: Stored, slots: list[int]) -> Fired:
        """Offer `slots` (oldest first) to the fire script; it fires those still due."""
        s = stored.schedule
        ids = [slot_task_id(s.queue, s.name, slot) for slot in slots]
        kafka = self.settings.channel == "kafka"
        # On Kafka the task goes to the delayed zset due now (ZADD), as a retry does: the workers'
        # next promotion publishes it through the outbox (this process has no producer).
        target = self.keys.delayed(s.queue) if kafka else self.keys.stream(s.queue)
        previous = self.keys.task(stored.last_task) if stored.last_task else self.keys.schedule(s.queue, s.name)
        keys = [self.keys.schedule(s.queue, s.name), self.keys.schedulers_seen(s.queue), target,
                self.keys.delayed(s.queue), previous, *(self.keys.task(i) for i in ids)]
        args: list[str | int | bytes] = [
            stored.version, "outbox" if kafka else "stream", stored.last_task, s.task_type, s.queue,
            codec.dumps(s.payload if s.payload is not None else {}), self.settings.default_max_attempts,
            repr(self.settings.default_timeout_s), self.settings.pending_ttl_s, "max_attempts,timeout_s",
            "1" if s.overlap else "0", s.misfire, s.max_catchup,
        ]
        for slot, task_id in zip(slots, ids):
            args += [slot, task_id]
        with unavailable_on_redis_errors():
            reply = self.scripts.schedule_fire(keys=keys, args=args, client=self.client)
        verdict, now_ms, last_s, last_task, fired = reply
        return Fired(str(verdict), int(now_ms), int(last_s), str(last_task), [str(i) for i in fired])

    def queues(self) -> list[str]:
        """Every queue seen (the console's index): where `load` looks when no queue is named."""
        with unavailable_on_redis_errors():
            return sorted(str(q) for q in self.client.smembers(self.keys.queue_index()))

    def set_paused(self, queue: str, name: str, paused: bool, actor: str) -> None:
        """Pause or resume (`NotFound` when there is no such schedule)."""
        with unavailable_on_redis_errors():
            found = self.scripts.schedule_pause(keys=[self.keys.schedule(queue, name)],
                                                args=["1" if paused else "0", actor], client=self.client)
        if not found:
            raise _missing(queue, name)

    def get(self, queue: str, name: str) -> Stored:
        """One stored schedule, or `NotFound`."""
        found = next((s for s in self.load([queue]) if s.schedule.name == name), None)
        if found is None:
            raise _missing(queue, name)
        return found

    def delete(self, queue: str, name: str) -> None:
        """Remove a stored schedule (a worker that still declares it adds it back at its next start)."""
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=True)
            pipe.delete(self.keys.schedule(queue, name))
            pipe.srem(self.keys.schedules(queue), name)
            if not pipe.execute()[0]:
                raise _missing(queue, name)

    def heartbeat(self, queues: Sequence[str]) -> None:
        """Say that a scheduler is looking at `queues` (see `Keys.schedulers_seen`)."""
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for queue in queues:
                pipe.set(self.keys.schedulers_seen(queue), 1, px=SEEN_TTL_MS)
            pipe.execute()

    def server_time(self) -> float:
        with unavailable_on_redis_errors():
            seconds, micros = self.client.time()
        return seconds + micros / 1e6

    def close(self) -> None:
        self.client.close()



def _missing(queue: str, name: str) -> NotFound:
    return NotFound(f"no schedule named {name!r} on queue {queue!r}")
