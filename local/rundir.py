"""The run directory of one local stack (`LOCAL_RUN_DIR`, default `.run/` in the checkout).

It holds the embedded servers' data, the development webhook secrets, and two files of the
running stack:

- `up.lock`: held with `flock` by the `python -m local` that owns the directory, and holding
  its pid. The kernel drops the lock when that process dies, however it dies, so a crash never
  leaves a stale lock behind (a pid file alone would need a liveness guess; the pid is only
  there to name the owner in the refusal).
- `stack.json` (mode 0600): what another terminal needs to reach the stack without its
  environment — the functions' URLs and the webhook sources with their secrets. Written at
  start, removed at a clean exit; `send-webhook` reads it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

LOCK = "up.lock"
STACK = "stack.json"


class AlreadyRunning(Exception):
    """Another live `python -m local` holds the run directory."""

    def __init__(self, run_dir: Path, pid: str) -> None:
        owner = f"pid {pid}" if pid else "another process"
        super().__init__(
            f"a local stack ({owner}) is already running on {run_dir}: stop it (Ctrl-C in its terminal), "
            "or give this one its own LOCAL_RUN_DIR"
        )


class NoStack(Exception):
    """No running stack in the run directory."""


@dataclass(frozen=True)
class Stack:
    """What `stack.json` records about a running stack."""

    pid: int
    enqueue_url: str
    status_url: str
    webhooks: dict[str, dict[str, str]]  # source -> {"scheme", "secret"}

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "enqueue_url": self.enqueue_url, "status_url": self.status_url,
                "webhooks": self.webhooks}


class RunDir:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock: TextIO | None = None

    def lock(self) -> None:
        """Own the directory or raise `AlreadyRunning`; the lock lasts as long as this process."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK, "a+")  # never truncate before holding the lock: the pid is the owner's
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip()
            handle.close()
            raise AlreadyRunning(self.path, pid) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def write_stack(self, stack: Stack) -> None:
        path = self.path / STACK
        fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(stack.to_json(), out)
        os.replace(path.with_suffix(".tmp"), path)  # a reader never sees half a file

    def release(self) -> None:
        """At a clean exit: forget the stack, then let go of the lock."""
        with contextlib.suppress(FileNotFoundError):
            (self.path / STACK).unlink()
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def read_stack(self) -> Stack:
        """The running stack, or `NoStack` saying why there is none."""
        try:
            data = json.loads((self.path / STACK).read_text())
        except FileNotFoundError:
            raise NoStack(f"no local stack is running on {self.path} (start one with `make up`; "
                          "LOCAL_RUN_DIR names another run directory)") from None
        except (OSError, ValueError) as exc:
            raise NoStack(f"{self.path / STACK} cannot be read: {exc}") from None
        stack = Stack(int(data["pid"]), data["enqueue_url"], data["status_url"], data["webhooks"])
        if not _alive(stack.pid):
            raise NoStack(f"the local stack on {self.path} (pid {stack.pid}) is not running any more; "
                          "start it again with `make up`")
        return stack


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
