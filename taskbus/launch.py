"""Running a worker process: what `taskbus worker` and `python -m worker_fn` do.

Settings (a bad one exits in one line), the handlers module named by `HANDLERS` (imported with the
current directory importable, as Celery and RQ do, so a user's own project works), the start-up
checks, `GET /healthz` and `GET /metrics` on `PORT` (or `METRICS_PORT`) when it is set, then the
worker until SIGTERM/SIGINT, with a thread that continues the re-drives of its queues and one
that fires their schedules; tracing (when on) is set up first and flushed last.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading
from types import ModuleType

from taskbus import logs, preflight
from taskbus.admin.redrive import RedriveRunner
from taskbus.registry import Registry
from taskbus.schedules import SchedulerRunner
from taskbus.telemetry import tracing
from taskbus.telemetry.metrics import WorkerMetrics
from taskbus.worker import Worker
from taskbus.worker.health import HealthServer


def install_stop_handlers(stop: threading.Event) -> None:
    """SIGTERM (the platform's stop) and SIGINT (Ctrl-C) ask the worker to drain and exit 0."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())


def run_worker(stop: threading.Event | None = None) -> int:
    """Run a worker until `stop` is set (by default: until SIGTERM or SIGINT); the exit code."""
    if stop is None:
        stop = threading.Event()
        install_stop_handlers(stop)
    settings = preflight.settings_or_exit()
    logs.configure(settings.log_level)
    tracing.setup(settings, "worker")
    registry = load_registry(settings.handlers)
    preflight.check(settings, "worker")
    port, port_name = (settings.port, "PORT") if settings.port else (settings.metrics_port, "METRICS_PORT")
    metrics = WorkerMetrics(settings.concurrency) if port else None
    worker = Worker(settings, registry, stop_event=stop, metrics=metrics)
    redrives = RedriveRunner(settings, settings.queues)  # any worker continues its queues' re-drives
    redrives.start()
    scheduler = SchedulerRunner(settings, settings.queues, registry.schedules)  # any worker fires (no leader)
    scheduler.start()
    health = None
    if port:
        try:
            health = HealthServer(settings.host, port, worker.problem, metrics, settings.api_keys).start()
        except OSError as exc:
            preflight.refuse(f"{port_name}={port}: cannot listen on {settings.host}:{port} ({exc.strerror})")
    try:
        return worker.run()
    finally:
        redrives.stop()
        scheduler.stop()
        if health is not None:
            health.close()
        tracing.shutdown()  # the drained attempts' spans, within FLUSH_S


def load_registry(name: str) -> Registry:
    """The `registry` of module `name`, imported with the current directory on `sys.path`; a
    module that is missing or has no `registry` exits in one line naming HANDLERS."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    module = _import(name, here)
    registry = getattr(module, "registry", None)
    if not isinstance(registry, Registry):
        preflight.refuse(
            f"HANDLERS={name!r} is invalid: {module.__file__ or name} has no `registry`; expected a module with "
            "`registry = taskbus.Registry()` and handlers registered on it"
        )
    return registry


def _import(name: str, here: str) -> ModuleType:
    expected = f"expected a module importable from {here} or installed (myapp/tasks.py is HANDLERS=myapp.tasks)"
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if name == missing or name.startswith(missing + "."):  # the module itself, not one it imports
            preflight.refuse(f"HANDLERS={name!r} is invalid: no module named {missing!r}; {expected}")
        raise  # the user's module failed to import something: its traceback is what they need
    except (TypeError, ValueError) as exc:  # a relative or empty name
        preflight.refuse(f"HANDLERS={name!r} is invalid ({exc}); {expected}")
