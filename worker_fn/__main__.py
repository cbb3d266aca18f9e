"""`python -m worker_fn`: run a worker until SIGTERM/SIGINT, then drain and exit 0."""

from __future__ import annotations

import importlib
import signal
import sys

from taskbus import Registry, Worker, logs
from taskbus.settings import Settings


def main() -> int:
    settings = Settings.from_env()
    logs.configure(settings.log_level)
    module = importlib.import_module(settings.handlers)
    registry = getattr(module, "registry", None)
    if not isinstance(registry, Registry):
        raise SystemExit(f"HANDLERS={settings.handlers}: the module has no `registry = Registry()`")
    worker = Worker(settings, registry)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: worker.stop())
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
