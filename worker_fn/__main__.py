"""`python -m worker_fn`: run a worker until SIGTERM/SIGINT, then drain and exit 0."""

from __future__ import annotations

import signal
import sys
import threading

stop_requested = threading.Event()


def _request_stop(*_: object) -> None:
    stop_requested.set()


# Before the heavier imports: a SIGTERM during start-up is a clean stop, not a crash.
for _signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(_signum, _request_stop)

import importlib  # noqa: E402

from taskbus import Registry, Worker, logs  # noqa: E402
from taskbus.settings import Settings  # noqa: E402


def main() -> int:
    settings = Settings.from_env()
    logs.configure(settings.log_level)
    module = importlib.import_module(settings.handlers)
    registry = getattr(module, "registry", None)
    if not isinstance(registry, Registry):
        raise SystemExit(f"HANDLERS={settings.handlers}: the module has no `registry = Registry()`")
    return Worker(settings, registry, stop_event=stop_requested).run()  # the signal handlers above set it


if __name__ == "__main__":
    sys.exit(main())
