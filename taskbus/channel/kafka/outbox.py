"""The Kafka outlet: every publication goes through the outbox zset in Redis first, and a task
stays there until a worker starts it. Entries never acknowledged (an enqueue that died between
recording and producing) are re-published after KAFKA_OUTBOX_AGE_S, and acknowledged ones no
worker started after KAFKA_REDELIVER_S (a broker that lost the record).
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from taskbus.channel import Recorded, Target
from taskbus.channel.kafka.client import Publisher, task_record
from taskbus.errors import Unavailable
from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.state.client import REDIS_ERRORS
from taskbus.state.scripts import Scripts
from taskbus.task import DEFAULT_PRIORITY, queue_of

log = logging.getLogger(__name__)

SWEEP_EVERY_S = 5.0  # how often each queue's outbox is looked through for stale entries
SWEEP_BATCH = 500


class KafkaOutlet:
    alone = False  # the record is produced after the script

    def __init__(self, settings: Settings, scripts: Scripts) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.scripts = scripts
        self.client = scripts.client
        self._publisher: Publisher | None = None
        self._publisher_lock = threading.Lock()
        self._next_sweep: dict[str, float] = {}  # per queue: a worker serves several

    @property
    def publisher(self) -> Publisher:
        """The producer, made on first use (after gunicorn forked; the status function never needs one)."""
        with self._publisher_lock:
            if self._publisher is None:
                self._publisher = Publisher(self.settings)
            return self._publisher

    def target(self, queue: str) -> Target:
        return Target("outbox", self.keys.outbox(queue))

    def prepare(self, queues: list[str]) -> None:
        self.publisher.ensure(queues)

    def recorded(self, tasks: list[Recorded]) -> None:
        """Produce the records of tasks just recorded and return once the broker acknowledged
        them. If it did not, the tasks are undone (a 503 leaves no task claiming to be queued);
        if this process dies first, a worker's outbox sweep publishes them."""
        if not tasks:
            return
        ids = [t.task_id for t in tasks]
        try:
            self.publisher.publish([task_record(self.settings, queue_of(t.task_id) or "", t.task_id,
                                                priority=t.priority) for t in tasks])
        except Unavailable:
            calls: list[tuple[list[str], list[Any]]] = [
                ([self.keys.task(t.task_id), self.keys.outbox(queue_of(t.task_id) or ""), t.dedupe_key], [t.task_id])
                for t in tasks]
            self.scripts.run_many(self.scripts.kafka_undo, calls, fsync=False, wait_ms=0)  # also on a cluster
            raise
        with contextlib.suppress(*REDIS_ERRORS):  # else the sweep publishes them once more: harmless
            self._mark_published(ids)

    def publish(self, queue: str, task_ids: list[str]) -> None:
        """Publish tasks already in the outbox (due delays and retries, stale entries)."""
        if task_ids:
            self.publisher.ensure([queue])
            levels = self._priorities(queue, task_ids)
            self.publisher.publish([task_record(self.settings, queue, t, anywhere=True, priority=p)
                                    for t, p in zip(task_ids, levels)])
            self._mark_published(task_ids)

    def _priorities(self, queue: str, task_ids: list[str]) -> list[int]:
        """Each task's priority, from its hash, read only while the queue has levels in use (one
        SCARD per batch otherwise): a delay or a retry keeps its level."""
        if not self.client.scard(self.keys.levels(queue)):
            return [DEFAULT_PRIORITY] * len(task_ids)
        pipe = self.client.pipeline(transaction=False)
        for t in task_ids:
            pipe.hget(self.keys.task(t), "priority")
        return [int(p) if p else DEFAULT_PRIORITY for p in pipe.execute()]

    def _mark_published(self, task_ids: list[str]) -> None:
        """The broker acknowledged these tasks' records: due again KAFKA_REDELIVER_S from now
        unless a worker starts them first (see lua/kafka_mark_published.lua)."""
        by_queue: dict[str, list[str]] = {}
        for task_id in task_ids:
            by_queue.setdefault(queue_of(task_id) or "", []).append(task_id)
        later_ms = int((self.settings.kafka_redeliver_s - self.settings.kafka_outbox_age_s) * 1000)
        for queue, ids in by_queue.items():
            self.scripts.kafka_mark_published(keys=[self.keys.outbox(queue)], args=[later_ms, *ids], client=self.client)

    def sweep(self, queue: str) -> None:
        """Every few seconds per queue, publish again the outbox entries older than
        KAFKA_OUTBOX_AGE_S whose task is still queued."""
        now = time.monotonic()
        if now < self._next_sweep.get(queue, 0.0):
            return
        self._next_sweep[queue] = now + SWEEP_EVERY_S
        age_ms = int(self.settings.kafka_outbox_age_s * 1000)
        old, _ = self.scripts.read_due(keys=[self.keys.outbox(queue)], args=[SWEEP_BATCH, age_ms], client=self.client)
        if not old:
            return
        keys = [self.keys.outbox(queue), *(self.keys.task(t) for t in old)]
        again: list[str] = self.scripts.kafka_republish(keys=keys, args=[age_ms, *old], client=self.client)
        if again:
            log.warning(
                "re-publishing tasks never published or never started",
                extra={"fields": {"queue": queue, "tasks": len(again)}},
            )
        self.publish(queue, again)

    def ping(self) -> None:
        self.publisher.ping()

    def close(self) -> None:
        if self._publisher is not None:
            self._publisher.close()
