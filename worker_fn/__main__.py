"""`python -m worker_fn`: run a worker until SIGTERM/SIGINT, then drain and exit 0 (the same as
`taskbus worker`, which it runs)."""

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

from taskbus.cli import worker  # noqa: E402


def main() -> None:
    worker.main(args=sys.argv[1:], prog_name="python -m worker_fn", obj=stop_requested)


if __name__ == "__main__":
    main()
