"""The gunicorn config module `taskbus serve` passes (`--config python:taskbus.http.gunicorn_conf`):
server hooks only, run in the gunicorn master. Settings stay on the command line (`serving`)."""

from __future__ import annotations

from typing import Any


def child_exit(server: Any, worker: Any) -> None:
    """A worker process exited: prometheus_client's multiprocess mode drops its live gauges
    (its counters and histograms stay in the scrape's sums)."""
    from taskbus.telemetry.metrics import mark_process_dead  # the master imports it only on a child's exit

    mark_process_dead(worker.pid)
