"""Scraping real processes: a worker's counters after 200 tasks (20 of them failing for good),
the console's queue gauges against Admin.overview, and an enqueue function with two gunicorn
processes whose request counters add up across both (prometheus_client's multiprocess mode)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import uuid
from pathlib import Path

import httpx
import pytest

from local.embedded import free_port
from taskbus.admin import Admin
from taskbus.enqueue import Enqueuer
from taskbus.settings import Settings
from taskbus.task import TaskSpec
from taskbus.telemetry.metrics import WorkerMetrics
from taskbus.worker.health import HealthServer
from testkit.functions import fresh_ports, start_function
from testkit.metrics import scrape, total
from testkit.procs import spawn, wait_healthy, wait_until

TASKS, FAILING = 200, 20


@pytest.fixture
def isolated(settings: Settings) -> Settings:
    """A key prefix of the test's own: the console's gauges cover every queue it knows."""
    return dataclasses.replace(settings, key_prefix=f"m{uuid.uuid4().hex[:8]}")


def enqueue(settings: Settings, queue: str, kinds: list[str], key: str) -> list[str]:
    enqueuer = Enqueuer(settings)
    try:
        specs = [(TaskSpec(type=kind, payload={"key": key}, queue=queue, max_attempts=3), None) for kind in kinds]
        return [task_id for task_id, _, _ in enqueuer.enqueue_many(specs)]
    finally:
        enqueuer.close()


def test_worker_counters_match_its_work(isolated: Settings, tmp_path: Path) -> None:
    queue = isolated.queues[0]
    port = free_port()
    worker = spawn("worker", dataclasses.replace(isolated, port=port, concurrency=8), tmp_path,
                   HANDLERS="tests.handlers")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(worker, url)
        kinds = ["permanent" if i % (TASKS // FAILING) == 0 else "record" for i in range(TASKS)]
        enqueue(isolated, queue, kinds, f"{isolated.key_prefix}:runs")
        finished = "taskbus_tasks_finished_total"
        samples = wait_until(lambda: (lambda s: s if total(s, finished, queue=queue) >= TASKS else None)(scrape(url)),
                             timeout=20, message="200 finished attempts", proc=worker)
        assert total(samples, "taskbus_tasks_started_total", queue=queue) == TASKS
        assert total(samples, "taskbus_tasks_started_total", queue=queue, type="permanent") == FAILING
        assert total(samples, finished, queue=queue, type="record", outcome="succeeded") == TASKS - FAILING
        assert total(samples, finished, queue=queue, type="permanent", outcome="failed") == FAILING
        assert total(samples, finished, queue=queue) == TASKS  # no retried, timed_out, ... besides
        assert total(samples, "taskbus_task_duration_seconds_count", queue=queue) == TASKS
        assert total(samples, "taskbus_task_wait_seconds_count", queue=queue) == TASKS
        assert total(samples, "taskbus_worker_busy", queue=queue) == 0
        assert total(samples, "taskbus_worker_capacity") == 8
        assert all("task_id" not in labels and "pid" not in labels for _, labels, _ in samples)
        admin = Admin(isolated)
        try:
            overview = admin.overview(queue)
        finally:
            admin.close()
        assert overview["counts"]["dead"] == FAILING  # what Redis says: the failed ones are dead letters
        assert overview["last_hour"]["succeeded"] == TASKS - FAILING
    finally:
        worker.stop()


def test_a_time_out_counts_as_timed_out(isolated: Settings, tmp_path: Path) -> None:
    """Both attempts of a hanging task run past their timeout: one is retried, one fails, and
    both count as timed_out; their runners count as free again."""
    queue = isolated.queues[0]
    port = free_port()
    worker = spawn("worker", dataclasses.replace(isolated, port=port), tmp_path, HANDLERS="tests.handlers")
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(worker, url)
        enqueuer = Enqueuer(isolated)
        try:
            enqueuer.enqueue(TaskSpec(type="hang", queue=queue, max_attempts=2, timeout_s=0.2))
        finally:
            enqueuer.close()
        timed_out = "taskbus_tasks_finished_total"
        samples = wait_until(
            lambda: (lambda s: s if total(s, timed_out, queue=queue, outcome="timed_out") >= 2 else None)(scrape(url)),
            timeout=15, message="two timed-out attempts", proc=worker)
        assert total(samples, timed_out, queue=queue) == 2
        assert total(samples, "taskbus_tasks_started_total", queue=queue, type="hang") == 2
        assert total(samples, "taskbus_worker_busy", queue=queue) == 0
    finally:
        worker.kill()  # its abandoned handler sleeps on


def test_console_queue_gauges_match_the_overview(isolated: Settings, tmp_path: Path) -> None:
    queue = isolated.queues[0]
    enqueue(isolated, queue, ["record"] * 7, f"{isolated.key_prefix}:runs")  # no worker: they stay queued
    console_port = free_port()
    console = spawn("console", dataclasses.replace(isolated, console_port=console_port, web_workers=1), tmp_path,
                    CONSOLE_READ_ONLY="true")
    url = f"http://127.0.0.1:{console_port}"
    admin = Admin(isolated)
    try:
        wait_healthy(console, url)
        before = admin.overview(queue)
        samples = scrape(url)
        after = admin.overview(queue)
        for state in ("queued", "scheduled", "running", "dead"):
            assert total(samples, "taskbus_queue_tasks", queue=queue, state=state) == before["counts"][state]
        assert before["counts"]["queued"] == 7
        age = total(samples, "taskbus_queue_oldest_age_seconds", queue=queue, state="queued")
        assert before["oldest_age_s"]["queued"] <= age <= after["oldest_age_s"]["queued"]
        assert total(samples, "taskbus_queue_oldest_age_seconds", queue=queue, state="running") == 0
        assert total(samples, "taskbus_queue_paused", queue=queue) == 0
        assert total(samples, "taskbus_workers", queue=queue) == before["workers"] == 0
        assert total(samples, "taskbus_http_requests_total", function="console", route="/healthz") >= 1
    finally:
        admin.close()
        console.stop()


def test_enqueue_request_counters_add_up_across_processes(isolated: Settings, tmp_path: Path) -> None:
    given = tmp_path / "prom"
    given.mkdir()
    (given / "counter_1.db").write_bytes(b"stale")  # a last run's file: wiped at start
    settings = fresh_ports(isolated, web_workers=2)
    proc, url = start_function("enqueue", settings, tmp_path, env={"PROMETHEUS_MULTIPROC_DIR": str(given)})
    try:
        assert not (given / "counter_1.db").exists()
        n = 40

        def post(i: int) -> int:  # a connection each, 8 at once: both processes take some
            body = {"type": "record", "payload": {"i": i}, "queue": settings.queues[0]}
            return httpx.post(f"{url}/tasks", json=body, timeout=5).status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            assert set(pool.map(post, range(n))) == {202}
        pids = wait_until(lambda: len(_pids(given)) >= 2 and _pids(given), timeout=10, message="two processes' files")
        assert len(pids) == 2, pids
        for _ in range(3):  # whichever process answers the scrape, the sums are the same
            samples = scrape(url)
            assert total(samples, "taskbus_http_requests_total", function="enqueue", route="/tasks", code="202") == n
            assert total(samples, "taskbus_http_request_duration_seconds_count", route="/tasks") == n
            assert total(samples, "taskbus_tasks_enqueued_total", queue=settings.queues[0]) == n
    finally:
        proc.stop()


def _pids(folder: Path) -> set[str]:
    """The processes that wrote metrics files (`counter_<pid>.db`, ...)."""
    return {path.stem.rsplit("_", 1)[-1] for path in folder.glob("*.db")}




def test_worker_serves_metrics_on_metrics_port_without_port(isolated: Settings, tmp_path: Path) -> None:
    port = free_port()
    worker = spawn("worker", dataclasses.replace(isolated, metrics_port=port, concurrency=3), tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(worker, url)
        assert total(scrape(url), "taskbus_worker_capacity") == 3
    finally:
        worker.stop()


@pytest.mark.parametrize("client, authorization, expected", [
    ("127.0.0.1", "", 200), ("203.0.113.9", "", 401), ("203.0.113.9", "Bearer nope", 401),
    ("203.0.113.9", "Bearer k2", 200),
])
def test_worker_metrics_need_an_api_key_off_loopback(client: str, authorization: str, expected: int) -> None:
    server = HealthServer("127.0.0.1", 0, lambda: None, WorkerMetrics(2), keys=("k1", "k2"))
    try:
        scraped = server.scrape(client, authorization)
        assert scraped is not None and scraped[0] == expected
    finally:
        server.httpd.server_close()
