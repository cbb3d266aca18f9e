"""Every metric keeps its per-round values, so the table can show medians with [min–max]."""

from __future__ import annotations

import statistics
from typing import Any


class Metrics:
    """The run's figures by key, plus the notes, raw extras and errors the report prints."""

    def __init__(self) -> None:
        self.data: dict[str, dict[str, Any]] = {}
        self.notes: list[str] = []
        self.detail: dict[str, list[Any]] = {}  # raw per-round extras (Redis commandstats)
        self.errors: list[str] = []

    def add(self, key: str, value: float | None, unit: str, label: str = "") -> None:
        """One round's value; None still creates the row, so a failed round shows as `failed`."""
        m = self.data.setdefault(key, {"unit": unit, "label": label or key, "values": []})
        if value is not None:
            m["values"].append(value)

    def na(self, key: str, unit: str, reason: str, label: str = "") -> None:
        """A row that cannot be measured on this build (shown as n/a, with the reason)."""
        m = self.data.setdefault(key, {"unit": unit, "label": label or key, "values": []})
        m["na"] = reason

    def median(self, key: str) -> float | None:
        m = self.data.get(key)
        return statistics.median(m["values"]) if m and m["values"] else None

    def summary(self) -> dict[str, Any]:
        """Every metric with its median, min, max and round count: the JSON's `metrics`."""
        out: dict[str, Any] = {}
        for key, m in self.data.items():
            v = m["values"]
            out[key] = {
                **m,
                "median": statistics.median(v) if v else None,
                "min": min(v) if v else None,
                "max": max(v) if v else None,
                "rounds": len(v),
            }
        return out


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(-(-p * len(s) // 100)) - 1))
    return s[k]
