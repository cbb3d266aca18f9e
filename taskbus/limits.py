"""Flow-control declarations: a task type's concurrency and rate limits, checked at
registration and laid out for the start script (see lua/limits.lua).

A rate is "N/s", "N/m" or "N/h" (N a positive number; "/m" alone means 1 per minute). Redis
keeps it as a GCRA: one theoretical arrival time per limit key, so the rate is shared by every
worker and a burst never exceeds `burst` starts at once.
"""

from __future__ import annotations

import dataclasses
import re

from taskbus.task import NAME_RE

_RATE_RE = re.compile(r"\s*(\d+(?:\.\d+)?)?\s*/\s*([smh])\s*")
_PERIOD_MS = {"s": 1000, "m": 60_000, "h": 3_600_000}
CONCURRENCY_LIMIT = 100_000
BURST_LIMIT = 100_000


def parse_rate(rate: str) -> float:
    """The ms between two starts at `rate` ("10/s" -> 100.0); ValueError when malformed."""
    match = _RATE_RE.fullmatch(rate) if isinstance(rate, str) else None
    if not match:
        raise ValueError(f"rate {rate!r} must look like '10/s', '5/m' or '/h'")
    count = float(match.group(1) or 1)
    if not 0 < count <= 1_000_000:
        raise ValueError(f"rate {rate!r}: the count must be > 0 and <= 1000000")
    return _PERIOD_MS[match.group(2)] / count


@dataclasses.dataclass(frozen=True)
class Limits:
    """At most `concurrency` running at once and at most one start per `interval_ms` (with
    `burst` at once) per limit key: the task's request field `concurrency_key`, else its payload's
    `key_field`, else one key for the whole type."""

    concurrency: int = 0  # 0: no concurrency limit
    key_field: str = ""
    interval_ms: float = 0.0  # 0: no rate limit
    burst: int = 1

    @classmethod
    def of(cls, task_type: str, concurrency: int | None, concurrency_key: str | None, rate: str | None,
           burst: int | None) -> Limits | None:
        """The limits `register` was given, checked (ValueError naming the type); None for none."""
        if concurrency is None and rate is None:
            if concurrency_key is not None or burst is not None:
                raise ValueError(f"{task_type!r}: concurrency_key and burst need concurrency= or rate=")
            return None
        if concurrency is not None and not (isinstance(concurrency, int) and 1 <= concurrency <= CONCURRENCY_LIMIT):
            raise ValueError(f"concurrency of {task_type!r} must be an integer from 1 to {CONCURRENCY_LIMIT}")
        if concurrency_key is not None and not NAME_RE.fullmatch(concurrency_key):
            raise ValueError(f"concurrency_key of {task_type!r} must be a payload field name")
        if burst is not None and not (isinstance(burst, int) and 1 <= burst <= BURST_LIMIT):
            raise ValueError(f"burst of {task_type!r} must be an integer from 1 to {BURST_LIMIT}")
        try:
            interval = parse_rate(rate) if rate is not None else 0.0
        except ValueError as exc:
            raise ValueError(f"{task_type!r}: {exc}") from None
        return cls(concurrency or 0, concurrency_key or "", interval, burst or 1)

    def row(self) -> list[float | str]:
        """The handler table's extra columns (rows 3-6 of a `handler_of` row, see lua/limits.lua)."""
        return [self.concurrency, self.key_field, self.interval_ms, self.burst]
