"""The task model: what a caller may submit, how ids look, and how a stored task reads.

A task id names its queue (`<queue>~<32 hex>`), so every key of a task shares the
queue's Redis Cluster hash tag and the status function finds it with one read.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
import os
import re
from typing import Any

from taskbus import codec
from taskbus.errors import ValidationError

NAME_RE = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
ID_RE = re.compile(r"([A-Za-z0-9_.:-]{1,128})~([0-9a-f]{32})")
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,253}[\x21-\x7e])?")

QUEUED, SCHEDULED, RUNNING, THROTTLED = "queued", "scheduled", "running", "throttled"
SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"
TERMINAL = frozenset({SUCCEEDED, FAILED, CANCELLED})
STATUSES = (QUEUED, SCHEDULED, THROTTLED, RUNNING, SUCCEEDED, FAILED, CANCELLED)

FIELDS = {"type", "payload", "queue", "max_attempts", "timeout_s", "delay_s", "priority", "concurrency_key"}
DEFAULTABLE = frozenset({"max_attempts", "timeout_s"})  # a handler may set its own defaults for these
DEFAULT_PRIORITY = 5  # 0-9, higher first; the default costs nothing (see channel/levels.py)
PRIORITIES = range(10)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A validated request to run `type` with `payload` on `queue`."""

    type: str
    payload: Any = dataclasses.field(default_factory=dict)
    queue: str = "default"
    max_attempts: int = 5
    timeout_s: float = 300.0
    delay_s: float = 0.0
    # Fields the request left out ("max_attempts", "timeout_s"): the values above are the
    # deployment's defaults, and the handler's own defaults replace them when the task first starts.
    defaults: frozenset[str] = frozenset()
    priority: int = DEFAULT_PRIORITY
    # The limit key its type's concurrency and rate limits count it under, instead of the payload
    # field the type names (taskbus.limits); None: that field, or one key for the type.
    concurrency_key: str | None = None


def check_name(field: str, value: object) -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ValidationError(field, "must be 1-128 characters of A-Z a-z 0-9 _ . : -")
    return value


def check_idempotency_key(field: str, value: object) -> str:
    if not isinstance(value, str) or not IDEMPOTENCY_KEY_RE.fullmatch(value):
        raise ValidationError(field, "must be 1-255 printable ASCII characters")
    return value


def parse_spec(
    obj: object, *, default_max_attempts: int = 5, default_timeout_s: float = 300.0, extra: frozenset[str] = frozenset()
) -> TaskSpec:
    """Validate a decoded JSON object into a `TaskSpec`; `extra` names fields the caller handles."""
    if not isinstance(obj, dict):
        raise ValidationError("body", "must be a JSON object")
    unknown = sorted(set(obj) - FIELDS - extra)
    if unknown:
        raise ValidationError(unknown[0][:64], "unknown field")
    if "type" not in obj:
        raise ValidationError("type", "is required")
    max_attempts = obj.get("max_attempts", default_max_attempts)
    if isinstance(max_attempts, float) and max_attempts.is_integer():
        max_attempts = int(max_attempts)  # JSON has one number type: 5.0 is 5
    if not _is_int(max_attempts) or not 1 <= max_attempts <= 100:
        raise ValidationError("max_attempts", "must be an integer from 1 to 100")
    timeout_s = obj.get("timeout_s", default_timeout_s)
    if not _is_number(timeout_s) or not timeout_s > 0 or timeout_s > 86400:
        raise ValidationError("timeout_s", "must be a number > 0 and <= 86400")
    delay_s = obj.get("delay_s", 0)
    if not _is_number(delay_s) or not 0 <= delay_s <= 366 * 86400:
        raise ValidationError("delay_s", "must be a number >= 0 and <= one year")
    priority = obj.get("priority", DEFAULT_PRIORITY)
    if isinstance(priority, float) and priority.is_integer():
        priority = int(priority)
    if not _is_int(priority) or priority not in PRIORITIES:
        raise ValidationError("priority", "must be an integer from 0 to 9 (higher runs first)")
    return TaskSpec(
        type=check_name("type", obj["type"]),
        payload=obj.get("payload", {}),
        queue=check_name("queue", obj.get("queue", "default")),
        max_attempts=max_attempts,
        timeout_s=float(timeout_s),
        delay_s=float(delay_s),
        defaults=frozenset(DEFAULTABLE - set(obj)),
        priority=priority,
        concurrency_key=check_idempotency_key("concurrency_key", obj["concurrency_key"])
        if "concurrency_key" in obj else None,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)  # type: ignore[arg-type]


def new_id(queue: str) -> str:
    """128 random bits, as uuid4 has (minus its version bits), at a fifth of its cost."""
    return f"{queue}~{os.urandom(16).hex()}"


def queue_of(task_id: str) -> str | None:
    """The queue named by a well-formed id, or None: raw input never reaches a key name."""
    match = ID_RE.fullmatch(task_id)
    return match.group(1) if match else None


def view(record: dict[str, str]) -> dict[str, Any]:
    """The public JSON shape of a stored task record (string fields from the task hash); a
    `throttled` task also says which limit holds it back."""
    shown = {
        "id": record["id"],
        "type": record["type"],
        "queue": record["queue"],
        "status": record["status"],
        "attempts": int(record.get("attempts", 0)),
        "max_attempts": int(record["max_attempts"]),
        "created_at": iso(record.get("created_ms")),
        "started_at": iso(record.get("started_ms")),
        "finished_at": iso(record.get("finished_ms")),
        "result": codec.loads(record["result"]) if record.get("result") else None,
        "error": codec.loads(record["error"]) if record.get("error") else None,
    }
    if record["status"] == THROTTLED:
        shown["throttled_reason"] = record.get("throttled_reason") or "concurrency"
    return shown


def iso(ms: str | None) -> str | None:
    if not ms:
        return None
    moment = dt.datetime.fromtimestamp(int(ms) / 1000, tz=dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
