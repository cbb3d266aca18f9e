"""The command line of each service for the local runner (`make up`) and the tests: the
`taskbus` command of `taskbus.serving` (`taskbus serve enqueue`, `taskbus serve status`,
`taskbus serve console`, `taskbus worker`), as the image and docker-compose.yml run it."""

from __future__ import annotations

import sys
from pathlib import Path

from taskbus.serving import GRACEFUL_TIMEOUT_S, SERVICES, command
from taskbus.settings import Settings

__all__ = ["GRACEFUL_TIMEOUT_S", "SERVICES", "argv", "taskbus_executable"]


def taskbus_executable() -> list[str]:
    """The `taskbus` console script of this interpreter's environment (`make up` installs the
    checkout into .venv), else the same entry point as `python -m taskbus`."""
    script = Path(sys.executable).parent / "taskbus"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "taskbus"]


def argv(name: str, settings: Settings | None = None) -> list[str]:
    """The argv that runs service `name` in the foreground. `settings` is not needed any more (the
    service reads its own from the environment); it is accepted for the callers that pass it."""
    if name not in SERVICES:
        raise ValueError(f"unknown service {name!r}; expected one of {SERVICES}")
    return [*taskbus_executable(), *command(name)[1:]]
