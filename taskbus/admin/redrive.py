"""Re-drives of dead letters as durable jobs: filtered, paced, cancellable, resumable.

A re-drive is a hash under its queue's hash tag (id `<queue>~<32 hex>`, like a task id). Whoever
runs it holds a lease in that hash; each step moves a few dead letters back to `queued` and
advances the job's cursor in one fenced script, so a step lands once or not at all: killing the
process that runs it loses nothing and moves nothing twice, and any other runner (a worker, a
console instance, the `taskbus redrive` command) continues it once the lease expires.

    Redrives(settings)
      .create(queue, *, actor, error_type=None, task_type=None, since_ms=None, until_ms=None,
              rate=None, dry_run=False) -> dict
          dry run: {"dry_run": True, "matched": n}; else the job (below), state "running"
      .get(redrive_id) -> dict | None
      .list(queue, limit=50) -> list[dict]         newest first
      .cancel(redrive_id, actor) -> dict            Conflict if it already ended
      .run(redrive_id, stop, on_progress=None) -> dict   run it here until it ends or `stop` is set
    job = {id, queue, state (running | done | cancelled), filters: {error_type, task_type, since, until},
           rate, total, moved, scanned, created_at, created_by, finished_at, cancelled_by, owner}
    RedriveRunner(settings, queues).start() / .stop(): a thread that continues the running
           re-drives of these queues (workers and console instances run one)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from taskbus.settings import Settings


class Redrives:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def create(
        self, queue: str, *, actor: str, error_type: str | None = None, task_type: str | None = None,
        since_ms: int | None = None, until_ms: int | None = None, rate: float | None = None, dry_run: bool = False,
    ) -> dict[str, Any]:
        raise NotImplementedError

    def get(self, redrive_id: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def list(self, queue: str, limit: int = 50) -> list[dict[str, Any]]:
        raise NotImplementedError

    def cancel(self, redrive_id: str, actor: str) -> dict[str, Any]:
        raise NotImplementedError

    def run(self, redrive_id: str, stop: threading.Event,
            on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class RedriveRunner:
    def __init__(self, settings: Settings, queues: Sequence[str]) -> None:
        self.settings = settings
        self.queues = queues

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError
