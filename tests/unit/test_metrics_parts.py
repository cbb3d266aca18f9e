"""The parts of taskbus.telemetry.metrics that need no process: outcome mapping (time-outs
included), the wait's source, the loopback rule, the multiprocess directory's wipe and the
gunicorn hook that marks a dead process."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskbus.channel import Job
from taskbus.http import gunicorn_conf
from taskbus.telemetry.metrics import WorkerMetrics, loopback, prepare_multiproc_dir
from testkit.metrics import parse, total


def job(entry: str = "1700000000000-0", type_: str = "t") -> Job:
    return Job("q", entry, "q~" + "0" * 32, type_, {}, 1, 3, 5.0)


@pytest.mark.parametrize("status, timed_out, outcome", [
    ("succeeded", False, "succeeded"), ("failed", False, "failed"), ("scheduled", False, "retried"),
    ("cancelled", False, "cancelled"), ("scheduled", True, "timed_out"), ("failed", True, "timed_out"),
    ("cancelled", True, "cancelled"),  # a cancel whose grace ran out is cancelled, not a time-out
])
def test_finished_outcome(status: str, timed_out: bool, outcome: str) -> None:
    metrics = WorkerMetrics(2)
    metrics.finished(job(), status, timed_out)
    samples = parse(metrics.render().decode())
    assert total(samples, "taskbus_tasks_finished_total", outcome=outcome) == 1
    assert total(samples, "taskbus_tasks_finished_total") == 1


def test_wait_from_a_stream_entry_and_none_from_kafka() -> None:
    metrics = WorkerMetrics(2)
    metrics.started([job("1700000000000-0"), job("topic/3/42")], now_ms=1700000002500)
    samples = parse(metrics.render().decode())
    assert total(samples, "taskbus_tasks_started_total") == 2
    assert total(samples, "taskbus_worker_busy", queue="q") == 2
    assert total(samples, "taskbus_task_wait_seconds_count") == 1
    assert total(samples, "taskbus_task_wait_seconds_sum") == 2.5
    metrics.settled(job(), 0.25)
    samples = parse(metrics.render().decode())
    assert total(samples, "taskbus_worker_busy", queue="q") == 1
    assert total(samples, "taskbus_task_duration_seconds_sum", type="t") == 0.25


@pytest.mark.parametrize("address, expected", [
    ("127.0.0.1", True), ("127.9.9.9", True), ("::1", True), ("::ffff:127.0.0.1", True),
    ("10.0.0.1", False), ("::ffff:10.0.0.1", False), ("0.0.0.0", False), ("", False), ("localhost", False),
])
def test_loopback(address: str, expected: bool) -> None:
    assert loopback(address) is expected


def test_a_given_directory_is_emptied_and_none_given_is_fresh(tmp_path: Path) -> None:
    given = tmp_path / "prom"
    given.mkdir()
    (given / "counter_12.db").write_bytes(b"x")
    (given / "keep.txt").write_text("not ours")
    assert prepare_multiproc_dir(str(given)) == str(given)
    assert sorted(p.name for p in given.iterdir()) == ["keep.txt"]
    fresh = Path(prepare_multiproc_dir(""))
    try:
        assert fresh.is_dir() and not any(fresh.iterdir()) and fresh != given
    finally:
        fresh.rmdir()


def test_child_exit_marks_the_dead_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    for name in ("gauge_livesum_4242.db", "gauge_livesum_7.db", "counter_4242.db"):
        (tmp_path / name).write_bytes(b"")

    class Exited:
        pid = 4242

    gunicorn_conf.child_exit(None, Exited())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["counter_4242.db", "gauge_livesum_7.db"]
