"""The scheduler loop every worker runs beside its handlers: no leader and no lock, since the
fire script decides on Redis's clock which slots still fire (see `schedule_fire.lua`).

Each loop offers every schedule whose next slot is due its latest due slots (at most
`max_catchup` + 1), then renews the queue's heartbeat, then sleeps until the earliest next slot
(at most `TICK_S`). Slots come from the local clock corrected by the server time each reply
reports: a skewed host asks early or late, the script answers on Redis's clock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from taskbus.errors import Unavailable
from taskbus.schedules.model import Schedule
from taskbus.schedules.slots import due, next_after
from taskbus.schedules.store import ScheduleStore, Stored
from taskbus.settings import Settings

log = logging.getLogger(__name__)

TICK_S = 1.0  # the longest sleep between loops: well inside store.SEEN_TTL_MS
RELOAD_S = 5.0  # how often stored definitions are read again (pauses, other deploys, deletes)


class SchedulerRunner:
    """A daemon thread: syncs `declared` into Redis once, then fires the schedules of `queues`."""

    def __init__(self, settings: Settings, queues: Sequence[str], declared: Sequence[Schedule] = ()) -> None:
        self.settings = settings
        self.queues = list(queues)
        self.declared = list(declared)
        self.store = ScheduleStore(settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="scheduler")
        self._offset_s = 0.0  # server clock minus local clock
        self._known: list[Stored] = []
        self._loaded_at = float("-inf")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.store.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._once()
            except Unavailable as exc:
                log.warning("scheduler: %s", exc)
                self._stop.wait(TICK_S)
            except Exception:  # noqa: BLE001 - the scheduler must outlive any one bad schedule
                log.exception("scheduler error")
                self._stop.wait(TICK_S)

    def _once(self) -> None:
        if self.declared:
            for schedule, (verdict, generation) in zip(self.declared, self.store.sync(self.declared)):
                if verdict != "same":
                    log.info("schedule %s %s (generation %d)", schedule.name, verdict, generation)
            self.declared = []
        if time.monotonic() - self._loaded_at >= RELOAD_S:
            self._offset_s = self.store.server_time() - time.time()
            self._reload()
        if not self._known:
            self._stop.wait(RELOAD_S)
            return
        for stored in self._known:
            if next_after(stored.schedule, stored.last_s) <= self._now():
                try:
                    self._fire(stored)
                except Unavailable:
                    raise
                except Exception:  # noqa: BLE001 - one schedule's failure must not stop the others
                    log.exception("schedule %s could not fire", stored.schedule.name)
        self.store.heartbeat(sorted({s.schedule.queue for s in self._known}))
        soonest = min(next_after(s.schedule, s.last_s) for s in self._known)
        self._stop.wait(min(TICK_S, max(0.005, soonest - self._now())))

    def _reload(self) -> None:
        mine = {(s.schedule.queue, s.schedule.name): s for s in self._known}
        self._known = self.store.load(self.queues)
        for stored in self._known:
            old = mine.get((stored.schedule.queue, stored.schedule.name))
            if old is not None and old.version == stored.version and old.last_s > stored.last_s:
                stored.last_s, stored.last_task = old.last_s, old.last_task  # a reply newer than the read
        self._loaded_at = time.monotonic()

    def _now(self) -> float:
        return time.time() + self._offset_s

    def _fire(self, stored: Stored) -> None:
        s = stored.schedule
        for _ in range(2):  # a second call only after 'prev': another worker fired a task meanwhile
            slots = due(s, stored.last_s, int(self._now()), s.max_catchup + 1)  # one more: to see a miss
            reply = self.store.fire(stored, slots)
            self._offset_s = reply.now_ms / 1000 - time.time()
            if reply.verdict == "stale":
                self._loaded_at = float("-inf")  # a newer definition: reload before the next loop
                return
            stored.last_s, stored.last_task = max(stored.last_s, reply.last_s), reply.last_task
            if reply.ids:
                log.info("schedule %s fired %s", s.name, ", ".join(reply.ids))
            if reply.verdict == "ok":
                return
