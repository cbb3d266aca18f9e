"""`Admin`: the operators' operations over the task state (see the package docstring for the
shapes every method returns)."""

from __future__ import annotations

from typing import Any

from taskbus.settings import Settings

STATES = ("queued", "scheduled", "running", "dead", "finished")
PURGEABLE = ("queued", "dead")
MAX_PAGE = 200


class Admin:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def queues(self) -> list[str]:
        raise NotImplementedError

    def note_queue(self, queue: str) -> None:
        """Add `queue` to the index of known queues (idempotent)."""
        raise NotImplementedError

    def overview(self, queue: str) -> dict[str, Any]:
        raise NotImplementedError

    def overviews(self) -> list[dict[str, Any]]:
        raise NotImplementedError

    def tasks(self, queue: str, state: str, cursor: str | None = None, limit: int = 50) -> dict[str, Any]:
        raise NotImplementedError

    def task(self, task_id: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def cancel(self, task_id: str, actor: str) -> tuple[str, dict[str, Any]]:
        raise NotImplementedError

    def retry(self, task_id: str, actor: str) -> dict[str, Any]:
        raise NotImplementedError

    def pause(self, queue: str, actor: str) -> dict[str, Any]:
        raise NotImplementedError

    def resume(self, queue: str, actor: str) -> dict[str, Any]:
        raise NotImplementedError

    def purge(self, queue: str, state: str, actor: str) -> int:
        raise NotImplementedError

    def workers(self, queue: str | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError
