"""The fenced Redis transitions both channels share: writing outcomes, and moving due delayed
tasks to the channel's target. The scripts check ownership themselves (lua/finish.lua,
lua/promote.lua); this module only lays out their KEYS and ARGV.
"""

from __future__ import annotations

from typing import Any

import redis

from taskbus.channel import DEAD_MAXLEN, Outcome, Target
from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.state.scripts import Scripts


class Fences:
    def __init__(self, settings: Settings, consumer: str, client: redis.Redis, scripts: Scripts) -> None:
        self.settings = settings
        self.consumer = consumer
        self.keys = Keys(settings.key_prefix)
        self.client = client
        self.scripts = scripts

    def finish(self, queue: str, outcomes: list[Outcome], entries: list[str]) -> list[str | None]:
        """Write outcomes in one script call; `entries[i]` is the stream entry to acknowledge with
        outcome i ('' when the channel acknowledges otherwise). Returns per outcome the status
        written, or None where this worker's lease was lost (fenced off)."""
        keys = [self.keys.stream(queue), self.keys.delayed(queue), self.keys.dead(queue)]
        args: list[Any] = [
            self.settings.consumer_group,
            self.consumer,
            self.settings.result_ttl_s,
            self.settings.pending_ttl_s,
            DEAD_MAXLEN,
        ]
        for outcome, entry in zip(outcomes, entries, strict=True):
            job = outcome.job
            keys += [self.keys.task(job.task_id), self.keys.events(job.task_id)]
            args += [entry, job.task_id, job.attempt, outcome.kind, outcome.body, outcome.delay_ms]
        written = self.scripts.finish(keys=keys, args=args, client=self.client)
        return [status or None for status in written]

    def promote(self, queue: str, limit: int, target: Target) -> tuple[list[str], int]:
        """Move due delayed tasks into `target`; returns the ids moved and ms until the next one
        is due (0: more are due now, -1: none)."""
        due, wait_ms = self.read_due(self.keys.delayed(queue), limit)
        if not due:
            return [], wait_ms
        keys = [self.keys.delayed(queue), target.key, *(self.keys.task(task_id) for task_id in due)]
        moved: list[str] = self.scripts.promote(keys=keys, args=[target.kind, *due], client=self.client)
        return moved, 0 if len(due) == limit else wait_ms

    def read_due(self, zset: str, limit: int, age_ms: int = 0) -> tuple[list[str], int]:
        """Ids in `zset` due by the server's clock (older than `age_ms`), and ms until the next."""
        due, wait_ms = self.scripts.read_due(keys=[zset], args=[limit, age_ms], client=self.client)
        return list(due), int(wait_ms)
