"""The one table of service command lines: what `taskbus serve <function>` runs (gunicorn on
functions-framework's app, the production way), and the `taskbus` command of each service that
the image, docker-compose.yml and the local runner use.

Two serving paths, one function module: `asgi` (the default) runs gunicorn with uvicorn workers
(`taskbus.http.uvicorn.Worker`) on `functions_framework.aio.create_asgi_app` of the ASGI target
(`enqueue`, `status`, `console`); `wsgi` (`SERVE_PATH=wsgi` or `taskbus serve --wsgi`) runs gunicorn
gthread on `functions_framework.create_app` of the Flask target (`enqueue_wsgi`, ...).

Why gunicorn of our own rather than the `functions-framework` CLI: the CLI cannot be given a
graceful timeout (it keeps gunicorn's 30 s, past Cloud Run's 10 s between SIGTERM and SIGKILL),
nor a worker count of ours."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

from taskbus.settings import Settings

FUNCTIONS = ("enqueue", "status", "console")
PATHS = ("asgi", "wsgi")  # serving paths; the first is the default
SERVE_PATH_ENV = "SERVE_PATH"
ASGI_WORKER = "taskbus.http.uvicorn.Worker"
GUNICORN_CONFIG = "python:taskbus.http.gunicorn_conf"  # server hooks: child_exit marks metrics files dead
SERVICES = (*FUNCTIONS, "worker")
GRACEFUL_TIMEOUT_S = 8  # below Cloud Run's 10 s between SIGTERM and SIGKILL
WORKER_TIMEOUT_S = 30  # gunicorn's silent-worker limit; a long-poll holds a thread, not the worker
KEEP_ALIVE_S = 5
# The console's threads (WSGI path) or sync endpoints at once (ASGI path): a few operators, each
# request a handful of Redis commands; nothing holds a thread for long.
CONSOLE_THREADS = 16


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
    """PORT (set by Cloud Run) wins over the function's own ENQUEUE_PORT / STATUS_PORT / CONSOLE_PORT."""
    check_function(name)
    own = {"enqueue": settings.enqueue_port, "status": settings.status_port, "console": settings.console_port}
    return settings.port or own[name]


def threads(name: str, settings: Settings) -> int:
    """The thread count of function `name`: ENQUEUE_THREADS, STATUS_THREADS, or CONSOLE_THREADS above."""
    check_function(name)
    own = {"enqueue": settings.enqueue_threads, "status": settings.status_threads, "console": CONSOLE_THREADS}
    return own[name]


def serve_path(environ: Mapping[str, str] | None = None) -> str:
    """SERVE_PATH (`asgi`, the default, or `wsgi`); anything else is a ValueError naming it."""
    value = (os.environ if environ is None else environ).get(SERVE_PATH_ENV, "").strip().lower() or PATHS[0]
    if value not in PATHS:
        raise ValueError(f"{SERVE_PATH_ENV}={value!r} is invalid: expected one of {', '.join(PATHS)}")
    return value


def target(name: str, path: str) -> str:
    """The functions-framework target of function `name` on serving path `path`."""
    check_function(name)
    return name if path == "asgi" else f"{name}_wsgi"


def gunicorn_argv(name: str, settings: Settings, path: str = "asgi") -> list[str]:
    """The gunicorn command line of function `name`: an 8 s graceful timeout, WEB_WORKERS
    processes (0: one per CPU), bound to HOST and the port above; on the asgi path uvicorn
    workers on the ASGI app, on the wsgi path gthread with the function's thread count."""
    if path not in PATHS:
        raise ValueError(f"unknown serving path {path!r}; expected one of {', '.join(PATHS)}")
    common = [
        "--bind",
        f"{settings.host}:{port(name, settings)}",
        "--workers",
        str(settings.web_workers or os.cpu_count() or 1),
        "--graceful-timeout",
        str(GRACEFUL_TIMEOUT_S),
        "--timeout",
        str(WORKER_TIMEOUT_S),
        "--keep-alive",
        str(KEEP_ALIVE_S),
        "--no-control-socket",  # gunicorn 27 would open one in ~/.gunicorn/, shared by every server on the host
        "--config",
        GUNICORN_CONFIG,
    ]
    app = f"(target={target(name, path)!r}, source={source(name)!r})"
    if path == "asgi":
        return [sys.executable, "-m", "gunicorn", "--worker-class", ASGI_WORKER, *common,
                f"functions_framework.aio:create_asgi_app{app}"]
    return [sys.executable, "-m", "gunicorn", "--worker-class", "gthread", "--threads", str(threads(name, settings)),
            *common,
            f"functions_framework:create_app{app}"]
