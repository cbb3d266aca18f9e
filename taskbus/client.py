"""The Python producer API: enqueue and read tasks from an application, without HTTP, under
the same rules as the enqueue and status functions (the same validation, ids and records)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from taskbus.admin import Admin
from taskbus.enqueue import Enqueuer
from taskbus.errors import ValidationError
from taskbus.settings import Settings
from taskbus.state.reader import StatusReader
from taskbus.task import TaskSpec, check_idempotency_key, parse_spec, view


@dataclasses.dataclass(frozen=True)
class Enqueued:
    """What `Client.enqueue` did: the task's id and status; `created` is False when an
    `idempotency_key` seen before returned the first task instead."""

    id: str
    status: str
    created: bool


class Client:
    """`Client()` reads the settings from the environment (REDIS_URL, KEY_PREFIX, CHANNEL,
    ...), as the functions do. Thread-safe; close it (or use `with`) to let go of connections.
    Raises `ValidationError` for a bad task and `Unavailable` when Redis (or Kafka) does not answer."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._enqueuer = Enqueuer(self.settings)
        self._reader = StatusReader(self.settings)
        self._ops: Admin | None = None

    def enqueue(
        self,
        type: str,
        payload: Any = None,
        *,
        queue: str = "default",
        idempotency_key: str | None = None,
        delay_s: float = 0.0,
        max_attempts: int | None = None,
        timeout_s: float | None = None,
        priority: int | None = None,
    ) -> Enqueued:
        """Record a task and publish it; `max_attempts` and `timeout_s` left as None take the
        handler's defaults, else the deployment's (DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT_S);
        `priority` 0-9, higher first (None: 5)."""
        task = {"type": type, "payload": {} if payload is None else payload, "queue": queue, "delay_s": delay_s,
                "max_attempts": max_attempts, "timeout_s": timeout_s, "idempotency_key": idempotency_key,
                "priority": priority}
        return Enqueued(*self._enqueuer.enqueue_many([self._item(task)])[0])

    def enqueue_many(self, tasks: Iterable[Mapping[str, Any]]) -> list[Enqueued]:
        """Each task a mapping of `enqueue`'s arguments (`type` required); each is recorded
        atomically on its own, and all of them in one round trip. Validates all first."""
        items = []
        for index, task in enumerate(tasks):
            try:
                items.append(self._item(task))
            except ValidationError as exc:
                raise ValidationError(f"tasks[{index}].{exc.field}", exc.message.split(": ", 1)[-1]) from None
        return [Enqueued(*result) for result in self._enqueuer.enqueue_many(items)]

    def _item(self, task: Mapping[str, Any]) -> tuple[TaskSpec, str | None]:
        """A validated task and its idempotency key (None fields are left out: defaults apply)."""
        fields = {k: v for k, v in task.items() if v is not None}
        key = fields.pop("idempotency_key", None)
        if key is not None:
            check_idempotency_key("idempotency_key", key)
        spec = parse_spec(
            fields, default_max_attempts=self.settings.default_max_attempts,
            default_timeout_s=self.settings.default_timeout_s,
        )
        return spec, key

    def get(self, task_id: str) -> dict[str, Any] | None:
        """The task as the status function shows it, or None when unknown or expired."""
        record = self._reader.get(task_id)
        return view(record) if record else None

    def wait(self, task_id: str, timeout_s: float) -> dict[str, Any] | None:
        """The task once `succeeded`, `failed` or `cancelled`, or as it is after `timeout_s`; None when unknown."""
        record = self._reader.wait(task_id, timeout_s)
        return view(record) if record else None

    def cancel(self, task_id: str) -> str:
        """Cancel a task: "cancelled" (it was queued or scheduled: it never starts) or
        "cancelling" (it runs: its handler sees `ctx.cancelled`, and it ends `cancelled`).
        Raises `NotFound`, or `Conflict` (`.status` is its final status) when it already finished."""
        return self._admin().cancel(task_id, actor="client")[0]

    def _admin(self) -> Admin:
        if self._ops is None:
            self._ops = Admin(self.settings, client=self._reader.client)
        return self._ops

    def close(self) -> None:
        self._enqueuer.close()
        self._reader.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()
