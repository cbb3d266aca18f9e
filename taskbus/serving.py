"""The one table of service command lines: what `taskbus serve <function>` runs (gunicorn on
functions-framework's app, the production way), and the `taskbus` command of each service that
the image, docker-compose.yml and the local runner use.

Why gunicorn of our own rather than the `functions-framework` CLI: the CLI cannot be given a
graceful timeout (it keeps gunicorn's 30 s, past Cloud Run's 10 s between SIGTERM and SIGKILL),
nor a worker count of ours."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from taskbus.settings import Settings

FUNCTIONS = ("enqueue", "status")
SERVICES = (*FUNCTIONS, "worker")
GRACEFUL_TIMEOUT_S = 8  # below Cloud Run's 10 s between SIGTERM and SIGKILL
WORKER_TIMEOUT_S = 30  # gunicorn's silent-worker limit; a long-poll holds a thread, not the worker
KEEP_ALIVE_S = 5


def command(name: str) -> list[str]:
    """The `taskbus` command line that runs service `name` (`taskbus serve enqueue`, ...)."""
    if name == "worker":
        return ["taskbus", "worker"]
    check_function(name)
    return ["taskbus", "serve", name]


def check_function(name: str) -> None:
    if name not in FUNCTIONS:
        raise ValueError(f"unknown function {name!r}; expected one of {', '.join(FUNCTIONS)}")


def source(name: str) -> str:
    """The function module inside the installed package: `serve` works from any directory."""
    check_function(name)
    return str(Path(__file__).resolve().parent / "functions" / f"{name}.py")


def port(name: str, settings: Settings) -> int:
    """PORT (set by Cloud Run) wins over the function's own ENQUEUE_PORT / STATUS_PORT."""
    check_function(name)
    return settings.port or (settings.enqueue_port if name == "enqueue" else settings.status_port)


def gunicorn_argv(name: str, settings: Settings) -> list[str]:
    """The gunicorn command line of function `name`: gthread, the function's thread count, an 8 s
    graceful timeout, WEB_WORKERS processes (0: one per CPU), bound to HOST and the port above."""
    threads = settings.enqueue_threads if name == "enqueue" else settings.status_threads
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        f"{settings.host}:{port(name, settings)}",
        "--worker-class",
        "gthread",
        "--workers",
        str(settings.web_workers or os.cpu_count() or 1),
        "--threads",
        str(threads),
        "--graceful-timeout",
        str(GRACEFUL_TIMEOUT_S),
        "--timeout",
        str(WORKER_TIMEOUT_S),
        "--keep-alive",
        str(KEEP_ALIVE_S),
        "--no-control-socket",  # gunicorn 27 would open one in ~/.gunicorn/, shared by every server on the host
        f"functions_framework:create_app(target={name!r}, source={source(name)!r})",
    ]
