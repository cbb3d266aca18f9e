"""The command line of each service, in one place: the local runner, the container image
(`python -m local.serve <name>`) and the compose test all read it from here."""

from __future__ import annotations

import os
import sys

from taskbus.settings import Settings

SERVICES = ("enqueue", "status", "worker")
GRACEFUL_TIMEOUT_S = 8  # below Cloud Run's 10 s between SIGTERM and SIGKILL


def argv(name: str, settings: Settings) -> list[str]:
    """The argv that runs service `name` in the foreground, from the repository root."""
    if name == "worker":
        return [sys.executable, "-m", "worker_fn"]
    if name not in ("enqueue", "status"):
        raise ValueError(f"unknown service {name!r}; expected one of {SERVICES}")
    port = settings.port or (settings.enqueue_port if name == "enqueue" else settings.status_port)
    threads = settings.enqueue_threads if name == "enqueue" else settings.status_threads
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{settings.host}:{port}",
        "--worker-class",
        "gthread",
        "--workers",
        str(settings.web_workers or os.cpu_count() or 1),
        "--threads",
        str(threads),
        "--graceful-timeout",
        str(GRACEFUL_TIMEOUT_S),
        "--timeout",
        "30",
        "--keep-alive",
        "5",
        "--no-control-socket",
        f'functions_framework:create_app(target="{name}", source="functions/{name}/main.py")',
    ]
