"""The result of a run, as written to bench/results/<timestamp>.json and printed by `report.table`."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import platform
import time
from pathlib import Path
from typing import Any

from bench.config import Config
from bench.metrics import Metrics
from bench.procs import ROOT
from bench.report import targets
from bench.stack import Stack
from taskbus.settings import Settings

Span = tuple[str, float, float]  # (section, start, end), monotonic


def build_result(
    cfg: Config,
    m: Metrics,
    stack: Stack,
    *,
    started: dt.datetime,
    t_start: float,
    valkey: str,
    load_tool: str,
    spans: list[Span],
    setup_log: list[str],
    run_dir: Path,
) -> dict[str, Any]:
    """Everything the run measured, as written to bench/results/<timestamp>.json."""
    summary = m.summary()
    return {
        "started": started.isoformat(timespec="seconds"),
        "elapsed_s": round(time.monotonic() - t_start, 1),
        "config": {**dataclasses.asdict(cfg), "only": sorted(cfg.only)},
        "host": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "valkey": valkey,
            "kafka": stack.broker_version() if stack.kafka is not None else None,
            "load": load_tool,
            "platform": platform.platform(),
        },
        "metrics": summary,
        "detail": m.detail,
        "targets": targets(summary, cfg),
        "host_other_load": {
            name: dict(zip(("mean_cores", "max_cores"), stack.host.between(a, b))) for name, a, b in spans
        },
        "errors": m.errors,
        "notes": setup_log
        + m.notes
        + [
            "peers run at their quietest log level; taskbus runs with its default settings"
            + (
                f" (LOG_LEVEL={Settings().log_level}: a JSON line per task start and finish)"
                if hasattr(Settings(), "log_level")
                else " (a JSON log line per task start and finish)"
            ),
            "Valkey runs without persistence (appendonly no); "
            "Redis CPU includes the bench's own counter polls (one GET per 10 ms)",
            f"process logs: {run_dir.relative_to(ROOT)}",
        ],
    }
