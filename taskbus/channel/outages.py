"""Which of a worker's queues are out of reach, on a Redis Cluster: each queue lives on one master,
so when one master fails (about 3 s until its replica takes over) only its queues are skipped,
each retried on its own short backoff, while the queues on the other masters keep being read,
started and finished. On a standalone Redis every queue shares the one server: `guard` then lets
the error through and the worker's loop backs off as a whole, as it always did.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator

from taskbus.errors import Unavailable
from taskbus.state.client import REDIS_ERRORS

log = logging.getLogger(__name__)

RETRY_FIRST_S = 0.1
RETRY_MAX_S = 1.0  # a promoted replica is used within this of its promotion


class Outages:
    def __init__(self, per_queue: bool) -> None:
        self.per_queue = per_queue
        self._down: dict[str, tuple[float, float]] = {}  # queue -> (retry at, next step), monotonic
        self._lock = threading.Lock()  # the control loop and the writer's threads report here

    def live(self, queues: Iterable[str]) -> list[str]:
        """`queues` without those in their back-off now (all of them while none failed)."""
        if not self._down:
            return list(queues)
        now = time.monotonic()
        return [q for q in queues if self._down.get(q, (0.0, 0.0))[0] <= now]

    def down(self) -> list[str]:
        """The queues that failed last time they were tried."""
        return sorted(self._down)

    @contextlib.contextmanager
    def guard(self, queue: str) -> Iterator[None]:
        """Run one queue's step: on a cluster, its `Unavailable` (or the redis-py error under it)
        backs that queue off and is not raised (the step's results are simply missing); its first
        success clears the back-off."""
        if not self.per_queue:
            yield
            return
        try:
            yield
        except (Unavailable, *REDIS_ERRORS) as exc:
            self.failed(queue, exc)
        else:
            if queue in self._down:
                self.recovered(queue)

    def failed(self, queue: str, exc: BaseException) -> None:
        with self._lock:
            step = self._down.get(queue, (0.0, RETRY_FIRST_S))[1]
            self._down[queue] = (time.monotonic() + step, min(step * 2, RETRY_MAX_S))
        fields = {"queue": queue, "error": str(exc)[:200], "retry_in_s": step}
        log.warning("queue's Redis node unavailable: skipping this queue only, retrying", extra={"fields": fields})

    def recovered(self, queue: str) -> None:
        with self._lock:
            self._down.pop(queue, None)
        log.info("queue's Redis node reachable again", extra={"fields": {"queue": queue}})
