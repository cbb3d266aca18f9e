"""The `taskbus` command: `taskbus serve enqueue|status|console`, `taskbus worker`, and the
operator commands of `taskbus.cli_ops` (queues, tasks, show, cancel, ...).

Every setting is an environment variable (see the README's Configuration table); the command
line only picks what to run. `--help` anywhere prints usage and starts nothing.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import threading

import click

from taskbus import cli_ops, cli_redrive, cli_schedules, preflight, serving

ENVIRONMENT = (
    "Configured by environment variables only (REDIS_URL, QUEUES, CONCURRENCY, ...: see the README's "
    "Configuration table). A bad setting exits with status 3 and one line on stderr."
)

GROUP_ENVIRONMENT = ENVIRONMENT.replace("status 3", "status 3 (the operator commands: 2)")


def _version() -> str:
    try:
        return importlib.metadata.version("taskbus")
    except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
        return "unknown (not installed)"


CONTEXT = {"help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT, epilog=GROUP_ENVIRONMENT)
@click.version_option(_version(), prog_name="taskbus")
def main() -> None:
    """taskbus: serverless-style task functions wired by Redis.

    Run the enqueue and status HTTP functions and the workers that execute your handlers;
    see and steer queues, tasks, dead letters and workers (queues, tasks, show, cancel, ...).
    """


@main.command(context_settings=CONTEXT, epilog=ENVIRONMENT)
@click.argument("function", type=click.Choice(serving.FUNCTIONS))
@click.option("--wsgi", is_flag=True, help="Serve the Flask (WSGI) target on gthread (the same as SERVE_PATH=wsgi).")
def serve(function: str, wsgi: bool) -> None:
    """Serve FUNCTION (enqueue, status or console) the production way.

    gunicorn with uvicorn workers on functions-framework's ASGI app (WEB_WORKERS processes, 0: one
    per CPU, an 8 s graceful timeout), bound to HOST and PORT (else ENQUEUE_PORT 8080 / STATUS_PORT
    8081 / CONSOLE_PORT 8082). GET /metrics adds up its processes through PROMETHEUS_MULTIPROC_DIR
    (emptied at start; unset: a fresh temporary directory). With --wsgi or SERVE_PATH=wsgi: gthread (ENQUEUE_THREADS /
    STATUS_THREADS threads, 16 for the console) on the Flask target instead. The console refuses to
    start without ADMIN_KEYS unless CONSOLE_READ_ONLY=true.
    """
    try:
        path = "wsgi" if wsgi else serving.serve_path()
    except ValueError as exc:
        preflight.refuse(str(exc))
    settings = preflight.settings_or_exit()
    # Check here, before gunicorn's imports: a refusal or an unreachable Redis is said at once
    # and once (not once per worker); the workers say the warnings.
    preflight.check(settings, function, warn=False)
    os.environ[preflight.CHECKED_ENV] = "1"
    argv = serving.gunicorn_argv(function, settings, path)
    from taskbus.telemetry.metrics import MULTIPROC_ENV, prepare_multiproc_dir  # only when serving

    # prometheus_client picks multiprocess mode at import, from the environment: set it before gunicorn
    os.environ[MULTIPROC_ENV] = prepare_multiproc_dir(settings.prometheus_multiproc_dir)
    sys.stdout.flush()
    os.execv(argv[0], argv)  # gunicorn takes this process: signals from the platform reach it directly


@main.command(context_settings=CONTEXT, epilog=ENVIRONMENT)
@click.pass_context
def worker(ctx: click.Context) -> None:
    """Run a worker: execute the handlers of HANDLERS on the queues in QUEUES.

    HANDLERS names a module with `registry = taskbus.Registry()` (default: the example handlers,
    worker_fn.handlers); the current directory is importable, so `HANDLERS=myapp.tasks` finds
    ./myapp/tasks.py. SIGTERM or Ctrl-C drains in-flight tasks for GRACE_S and exits 0. With PORT
    set, GET /healthz on it answers 200, or 503 while Redis or the channel is unreachable, and
    GET /metrics serves Prometheus metrics (on METRICS_PORT when only that is set).
    """
    from taskbus.launch import run_worker  # the worker's imports only when one runs

    stop = ctx.obj if isinstance(ctx.obj, threading.Event) else None
    sys.exit(run_worker(stop))


for _command in [*cli_ops.COMMANDS, cli_redrive.redrive, cli_schedules.schedules]:
    main.add_command(_command)
