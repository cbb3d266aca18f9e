"""The Grafana dashboard and the Prometheus alerts use only metric names taskbus exports (no
promtool here: the expressions are parsed for `taskbus_*` names), and every exported name
follows Prometheus naming: base units, `_total` on counters, no unbounded label."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from taskbus.telemetry.metrics import QUEUE_GAUGES, HttpMetrics, WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
NAME = re.compile(r"\btaskbus_[a-z0-9_]+\b")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
UNBOUNDED = {"task_id", "id", "host", "hostname", "pid", "consumer", "path", "entry"}


def exported() -> set[str]:
    """Every series name a scrape can hold."""
    names = {name for name, _, _ in QUEUE_GAUGES}
    for metrics in (WorkerMetrics(4), HttpMetrics("enqueue")):
        for family in metrics.registry.collect():
            names.update(family.name + suffix for suffix in SUFFIXES[family.type])
    return names


def _label_names() -> set[str]:
    found: set[str] = set()
    for metrics in (WorkerMetrics(4), HttpMetrics("enqueue")):
        for collector in list(metrics.registry._collector_to_names):  # noqa: SLF001 - the metric objects
            found.update(getattr(collector, "_labelnames", ()))
    return found | {label for _, _, labels in QUEUE_GAUGES for label in labels}


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    return [node] if isinstance(node, str) else []


def test_the_dashboard_uses_exported_names_only() -> None:
    dashboard = json.loads((ROOT / "deploy/grafana/taskbus.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    used = {name for text in _strings(dashboard) for name in NAME.findall(text)}
    assert len(exprs) >= 10 and used, "the dashboard has no queries"
    assert used <= exported(), sorted(used - exported())
    assert {"taskbus_queue_oldest_age_seconds", "taskbus_tasks_finished_total", "taskbus_http_requests_total"} <= used


def test_the_alerts_use_exported_names_only() -> None:
    rules = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"][0]["rules"]
    alerts = {rule["alert"]: rule["expr"] for rule in rules}
    used = {name for rule in rules for text in _strings(rule) for name in NAME.findall(text)}
    assert used <= exported(), sorted(used - exported())
    assert "taskbus_queue_oldest_age_seconds" in alerts["TaskbusOldestQueuedTaskTooOld"]
    assert 'state="dead"' in alerts["TaskbusDeadLettersGrowing"]
    assert "taskbus_workers" in alerts["TaskbusNoLiveWorker"]


def test_exported_names_follow_prometheus_naming() -> None:
    names = exported()
    for name in names:
        assert name.startswith("taskbus_")
        assert "milliseconds" not in name and not name.endswith("_ms"), name
    assert "taskbus_task_duration_seconds_bucket" in names and "taskbus_tasks_started_total" in names
    assert not _label_names() & UNBOUNDED, _label_names() & UNBOUNDED
