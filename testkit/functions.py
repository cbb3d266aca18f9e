"""The enqueue and status functions as real processes: the one way tests, chaos and bench
start them, on fresh ports, up once they answer.

By default each runs as `taskbus serve <name>` (our gunicorn command line, through
`local.commands.argv`, as `make up` and the image run it); `cli=True` runs it the README's way instead, `python -m
functions_framework --target <name>`, configured only by the settings that differ from the
defaults.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from local.embedded import free_port
from taskbus.settings import Settings
from testkit.env import env_of
from testkit.procs import Proc, spawn, wait_healthy

NAMES = ("enqueue", "status")


def fresh_ports(settings: Settings, **changes: object) -> Settings:
    """`settings` (plus `changes`) on two free ports, its links pointing at the new status function."""
    status_port = free_port()
    return dataclasses.replace(settings, enqueue_port=free_port(), status_port=status_port,  # type: ignore[arg-type]
                               status_base_url=f"http://127.0.0.1:{status_port}", **changes)


def url_of(name: str, settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.enqueue_port if name == 'enqueue' else settings.status_port}"


def start_function(name: str, settings: Settings, log_dir: Path, wrapper: tuple[str, ...] = (),
                   env: Mapping[str, str] | None = None, healthz: int | None = 200,
                   cli: bool = False) -> tuple[Proc, str]:
    """Start function `name` on its port in `settings` and wait until it is up: its /healthz
    answers `healthz`, or, with `healthz=None`, it answers HTTP at all (for a Redis that is down
    or hung). `env` is added to the environment; a process that never comes up is killed."""
    url = url_of(name, settings)
    if cli:
        port = url.rsplit(":", 1)[1]
        argv = [sys.executable, "-m", "functions_framework", "--source", f"functions/{name}/main.py",
                "--target", name, "--port", port]
        proc = Proc(name, [*wrapper, *argv], env_of(settings, changed_only=True, **(env or {})),
                    log_dir / f"{name}-cli-{time.monotonic_ns()}.log")
    else:
        proc = spawn(name, settings, log_dir, wrapper, **(env or {}))
    try:
        wait_healthy(proc, url, healthz)
    except BaseException:
        proc.kill()
        raise
    return proc, url


@dataclasses.dataclass
class FunctionPair:
    """Both functions of one setup: the settings they run with (with their ports), their
    processes and where they answer."""

    settings: Settings
    procs: dict[str, Proc]
    log_dir: Path
    env: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)  # each function's own, for restart()
    options: dict[str, Any] = dataclasses.field(default_factory=dict)  # start_function's, for restart()

    @property
    def urls(self) -> dict[str, str]:
        """`{"enqueue": url, "status": url}`: the shape the `functions` fixture gives tests."""
        return {name: url_of(name, self.settings) for name in self.procs}

    @property
    def enqueue(self) -> str:
        return url_of("enqueue", self.settings)

    @property
    def status(self) -> str:
        return url_of("status", self.settings)

    def start(self, name: str) -> None:
        """Start function `name` (again) on its port, with the environment and options it had."""
        self.procs[name], _ = start_function(name, self.settings, self.log_dir, env=self.env.get(name),
                                             **self.options)

    def restart(self, name: str) -> None:
        """SIGKILL function `name` and start it again on its port, as its platform would."""
        self.procs[name].kill()
        self.start(name)

    def stop(self, timeout: float = 15.0) -> None:
        for proc in self.procs.values():
            proc.stop(timeout)


def start_functions(settings: Settings, log_dir: Path, env: Mapping[str, str] | None = None,
                    enqueue_env: Mapping[str, str] | None = None, wrapper: tuple[str, ...] = (),
                    healthz: int | None = 200, cli: bool = False) -> FunctionPair:
    """Start the enqueue and status functions for `settings` on fresh ports and wait until both
    are up (see `start_function`). `env` goes to both, `enqueue_env` to enqueue only (webhook
    sources, say). The caller stops them: `FunctionPair.stop()`, or use `function_pair`."""
    pair = FunctionPair(fresh_ports(settings), {}, log_dir,
                        env={"enqueue": {**(env or {}), **(enqueue_env or {})}, "status": dict(env or {})},
                        options=dict(wrapper=wrapper, healthz=healthz, cli=cli))
    try:
        for name in NAMES:
            pair.start(name)
    except BaseException:
        pair.stop()
        raise
    return pair


@contextlib.contextmanager
def function_pair(settings: Settings, log_dir: Path, **options: object) -> Iterator[FunctionPair]:
    """`start_functions(settings, log_dir, **options)`, stopped on leaving the block."""
    pair = start_functions(settings, log_dir, **options)  # type: ignore[arg-type]
    try:
        yield pair
    finally:
        pair.stop()
