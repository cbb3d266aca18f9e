"""Prometheus metrics, in base units with bounded labels (queue, type, route, outcome; never a
task id, host or pid).

    WorkerMetrics   one worker process: tasks started and finished, handler time, wait from due
                    to start, busy runners and capacity (served by `worker.health` on /metrics)
    HttpMetrics     one function: requests by route and code, their time, tasks enqueued,
                    webhook deliveries; several gunicorn processes add up through
                    prometheus_client's multiprocess mode (PROMETHEUS_MULTIPROC_DIR, set up by
                    `prepare_multiproc_dir` before gunicorn starts)
    QueueCollector  the queue-wide gauges, read from Redis at scrape time through
                    `Admin.overviews()` (the console's /metrics only: one place, one query set)

Why private registries: no global default instance (two services in one test process stay
apart), and nothing registers at import time.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from taskbus.errors import Unavailable

if TYPE_CHECKING:
    from taskbus.admin import Admin
    from taskbus.channel import Job

log = logging.getLogger(__name__)

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format every Prometheus version scrapes
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client reads it itself, at import
OUTCOMES = ("succeeded", "failed", "retried", "cancelled", "timed_out", "dead_lettered")
WEBHOOK_RESULTS = ("accepted", "duplicate", "invalid_signature", "invalid_timestamp")
UNMATCHED = "unmatched"  # the route label of a request no route matched (404/405)
# Handler time and queue wait span milliseconds to hours (tasks time out at up to a day).
TASK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, float("inf"))
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, float("inf"))
# The queue-wide gauges QueueCollector yields (name, help, labels).
QUEUE_GAUGES = (
    ("taskbus_queue_tasks", "Tasks per queue by state.", ("queue", "state")),
    ("taskbus_queue_oldest_age_seconds", "Age of the oldest queued task (since due) and running attempt (since "
     "start); 0 when there is none.", ("queue", "state")),
    ("taskbus_queue_paused", "1 while the queue is paused.", ("queue",)),
    ("taskbus_workers", "Live workers reading the queue.", ("queue",)),
)
# The start script's written status (or the watchdog's time-out) -> the finished outcome.
_STATUS_OUTCOME = {"succeeded": "succeeded", "failed": "failed", "scheduled": "retried", "cancelled": "cancelled"}


class _Metrics:
    """A private registry, and the metrics' children cached per label set: a task or request
    costs a dict lookup and an increment, no new metric objects."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._children: dict[tuple[str, ...], Any] = {}

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (metric._name, *labels)  # noqa: SLF001 - one cache for every metric
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child


class WorkerMetrics(_Metrics):
    """The counters of one worker process."""

    def __init__(self, capacity: int) -> None:
        super().__init__()
        r = self.registry
        self._started = Counter("taskbus_tasks_started", "Attempts started.", ["queue", "type"], registry=r)
        self._finished = Counter("taskbus_tasks_finished", "Attempts finished, by outcome.",
                                 ["queue", "type", "outcome"], registry=r)
        self._duration = Histogram("taskbus_task_duration_seconds", "Handler time of each attempt.",
                                   ["queue", "type"], buckets=TASK_BUCKETS, registry=r)
        self._wait = Histogram("taskbus_task_wait_seconds", "From the time a task was due to its start.",
                               ["queue"], buckets=TASK_BUCKETS, registry=r)
        self._busy = Gauge("taskbus_worker_busy", "Handlers running now.", ["queue"], registry=r,
                           multiprocess_mode="livesum")
        Gauge("taskbus_worker_capacity", "Handlers this worker runs at once (CONCURRENCY).", registry=r,
              multiprocess_mode="livesum").set(capacity)

    def started(self, jobs: Sequence[Job], now_ms: float) -> None:
        """A batch of attempts started. The wait is measured from the Redis Streams entry id (its
        milliseconds: when the task was enqueued, or promoted once due, or retried); Kafka's
        entries carry no time, so they record none."""
        for job in jobs:
            self._child(self._started, job.queue, job.type).inc()
            self._child(self._busy, job.queue).inc()
            stamp, dash, _ = job.entry.partition("-")
            if dash and stamp.isdigit():
                self._child(self._wait, job.queue).observe(max(0.0, (now_ms - int(stamp)) / 1000))

    def settled(self, job: Job, seconds: float) -> None:
        """The handler returned (or was given up on): its runner is free."""
        self._child(self._busy, job.queue).dec()
        self._child(self._duration, job.queue, job.type).observe(seconds)

    def finished(self, job: Job, status: str, timed_out: bool) -> None:
        """The status the finish script wrote; a time-out that failed or retried counts as timed_out."""
        outcome = "timed_out" if timed_out and status in ("failed", "scheduled") else _STATUS_OUTCOME.get(status)
        if outcome is not None:
            self._child(self._finished, job.queue, job.type, outcome).inc()

    def dead_lettered(self, queue: str) -> None:
        """Dead-lettered by the start script without running (record missing, its last attempt's
        worker died, no handler): the type is not known here."""
        self._child(self._finished, queue, "unknown", "dead_lettered").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class HttpMetrics(_Metrics):
    """The counters of one function (`function` is its label: enqueue, status, console). With
    `multiproc_dir` (PROMETHEUS_MULTIPROC_DIR) a scrape reads every process's files."""

    def __init__(self, function: str, multiproc_dir: str = "", collectors: Iterable[Any] = ()) -> None:
        super().__init__()
        self.function = function
        self.multiproc_dir = multiproc_dir
        r = self.registry
        self._requests = Counter("taskbus_http_requests", "HTTP requests answered.",
                                 ["function", "route", "code"], registry=r)
        self._duration = Histogram("taskbus_http_request_duration_seconds", "Time to answer a request.",
                                   ["function", "route"], buckets=HTTP_BUCKETS, registry=r)
        self._enqueued = Counter("taskbus_tasks_enqueued", "Tasks created (not deduplicated).", ["queue"], registry=r)
        self._webhooks = Counter("taskbus_webhook_deliveries", "Webhook deliveries, by result.",
                                 ["source", "result"], registry=r)
        self._extra: CollectorRegistry | None = None  # collectors of their own, appended to every scrape
        for collector in collectors:
            self._extra = self._extra or CollectorRegistry(auto_describe=False)
            self._extra.register(collector)

    def request(self, route: str, code: int, seconds: float) -> None:
        self._child(self._requests, self.function, route, str(code)).inc()
        self._child(self._duration, self.function, route).observe(seconds)

    def enqueued(self, queue: str, n: int = 1) -> None:
        self._child(self._enqueued, queue).inc(n)

    def webhook(self, source: str, result: str) -> None:
        self._child(self._webhooks, source, result).inc()

    def render(self) -> bytes:
        """This process's counters, or every process's in multiprocess mode, then the collectors'."""
        if self.multiproc_dir:
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry, path=self.multiproc_dir)  # type: ignore[no-untyped-call]
            out = generate_latest(registry)
        else:
            out = generate_latest(self.registry)
        return out if self._extra is None else out + generate_latest(self._extra)


class QueueCollector:
    """The queue-wide gauges, from one `Admin.overviews()` per scrape (three pipelined rounds of
    O(1) commands per queue). A Redis outage leaves them out of the scrape, with a warning, so
    the process's own counters are still served."""

    def __init__(self, admin: Admin) -> None:
        self.admin = admin

    def describe(self) -> list[Metric]:
        return []  # nothing is read from Redis when the collector is registered

    def collect(self) -> Iterator[Metric]:
        try:
            overviews = self.admin.overviews()
        except Unavailable as exc:
            log.warning("queue gauges left out of /metrics: Redis is unavailable",
                        extra={"fields": {"error": str(exc)[:200]}})
            return
        tasks, age, paused, workers = (GaugeMetricFamily(name, doc, labels=list(labels))
                                       for name, doc, labels in QUEUE_GAUGES)
        for o in overviews:
            queue = o["queue"]
            for state in ("queued", "scheduled", "throttled", "running", "dead"):
                tasks.add_metric([queue, state], o["counts"][state])
            for state in ("queued", "running"):
                age.add_metric([queue, state], o["oldest_age_s"][state] or 0.0)
            paused.add_metric([queue], 1.0 if o["paused"] else 0.0)
            workers.add_metric([queue], o["workers"])
        yield from (tasks, age, paused, workers)


def loopback(address: str) -> bool:
    """Whether a client address is this host (127.0.0.0/8, ::1, or IPv4-mapped loopback)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def prepare_multiproc_dir(given: str) -> str:
    """The multiprocess directory of one service start: PROMETHEUS_MULTIPROC_DIR emptied of the
    last run's files (stale counters would add up with the new ones), or a fresh temporary one."""
    if not given:
        return tempfile.mkdtemp(prefix="taskbus-metrics-")
    path = Path(given)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    return str(path)


def mark_process_dead(pid: int) -> None:
    """gunicorn's `child_exit`: drop a dead process's live gauges (its counters stay counted)."""
    if os.environ.get(MULTIPROC_ENV):  # the master's own environment, set by `taskbus serve`
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def now_ms() -> float:
    return time.time() * 1000
