"""Child processes of a test, chaos or bench run: start, wait for, stop.

Every child runs in a process group of its own (so a signal reaches what it forks too:
gunicorn's workers, the process under a faketime wrapper) and dies with the run
(`die_with_parent`), however the run ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from local.commands import argv as service_argv
from local.embedded import spawn_logged
from taskbus.settings import Settings
from testkit.env import ROOT, env_of

_live: list[Proc] = []


class WaitTimedOut(AssertionError):
    """`wait_until` gave up: a test failure, not an error of the code under test."""


class Proc:
    """One child started in a new session, logging to `log`, in `cwd` (default: the checkout)."""

    def __init__(self, name: str, argv: Sequence[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> None:
        self.name = name
        self.log = log
        self.popen = spawn_logged(list(argv), log, env=env, cwd=cwd, new_session=True)
        self.pid = self.popen.pid
        _live.append(self)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: int) -> None:
        """Signal the leader only (a worker's SIGTERM drain, SIGSTOP), not its group."""
        self.popen.send_signal(signum)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def kill(self) -> None:
        """SIGKILL the process and everything it started (gunicorn's worker, say)."""
        self._forget()
        _signal_group(self.pid, signal.SIGKILL)
        if self.popen.poll() is None:
            self.popen.wait(10)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the group (a wrapper such as faketime may sit between us and gunicorn), wait
        up to `timeout` s, then SIGKILL whatever of the group is left."""
        if self.popen.poll() is None:
            _signal_group(self.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout)
        self.kill()

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def _forget(self) -> None:
        with contextlib.suppress(ValueError):
            _live.remove(self)


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def live() -> list[Proc]:
    """Every process started and not yet stopped or killed, oldest first."""
    return list(_live)


def spawn(name: str, settings: Settings, log_dir: Path, wrapper: tuple[str, ...] = (),
          env: dict[str, str] | None = None, **extra_env: str) -> Proc:
    """Start service `name` (`local.commands`: enqueue, status or worker) under `settings`.
    `wrapper` prefixes its command line (e.g. `faketime -f +600s`); `env`, if given, replaces
    the environment `env_of(settings)` would build (the CLI tests give only what a user sets)."""
    log = log_dir / f"{name}-{time.monotonic_ns()}.log"
    environment = env if env is not None else env_of(settings)
    return Proc(name, [*wrapper, *service_argv(name, settings)], {**environment, **extra_env}, log)


def stop(*procs: Proc, timeout: float = 15.0) -> None:
    """Stop each of `procs` in turn (see `Proc.stop`)."""
    for proc in procs:
        proc.stop(timeout)


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition", proc: Proc | None = None) -> Any:
    """Return the first truthy value of `predicate()`; fail loudly after `timeout` seconds, or
    as soon as `proc` (if given) has exited, with the end of its log."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if proc is not None and not proc.alive():
            raise WaitTimedOut(f"{proc.name} exited with {proc.popen.returncode} while waiting for {message}:\n"
                               f"{proc.tail(40)}")
        if time.monotonic() > deadline:
            raise WaitTimedOut(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def wait_healthy(proc: Proc, base_url: str, status: int | None = 200, timeout: float = 20.0) -> None:
    """The one readiness poll of an HTTP function: until `GET /healthz` answers `status`, or,
    with `status=None`, until `GET /` answers anything at all (a route miss touches no Redis:
    for functions whose Redis is down or hung). Fails at once if `proc` exits."""
    path = "/healthz" if status is not None else "/"

    def answers() -> bool:
        try:
            code = httpx.get(base_url + path, timeout=1).status_code
        except httpx.HTTPError:
            return False
        return status is None or code == status

    wait_until(answers, timeout=timeout, message=f"{proc.name} {path}" + (f" {status}" if status else ""), proc=proc)
