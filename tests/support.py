"""Helpers for tests that drive real processes: env building, waiting, process control."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from local.commands import argv
from local.embedded import EmbeddedKafka, die_with_parent
from taskbus.settings import Settings

ROOT = Path(__file__).resolve().parent.parent


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.02,
               message: str = "condition") -> Any:
    """Return the first truthy value of `predicate()`; fail loudly after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {message}")
        time.sleep(interval)


def kafka_settings(broker: EmbeddedKafka, **changes: object) -> dict[str, object]:
    """Settings changes for CHANNEL=kafka against `broker`, quick to react for tests (a 3 s
    session, a 10 ms fetch wait). Each test's queue is its own topic and consumer group."""
    return dict(channel="kafka", kafka_bootstrap_servers=broker.bootstrap, kafka_partitions=2,
                kafka_replication_factor=1, kafka_session_timeout_ms=3000, kafka_fetch_wait_ms=10,
                kafka_produce_timeout_s=2.0, kafka_outbox_age_s=3.0) | changes


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment that makes `Settings.from_env()` return `settings` in a child process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUNCTION_", "PYTEST_"))}
    for field in dataclasses.fields(settings):
        if field.metadata.get("env") == "custom":
            continue  # API_KEYS and WEBHOOK_* are passed as `extra` by the tests that use them
        value = getattr(settings, field.name)
        env[field.name.upper()] = ",".join(value) if isinstance(value, tuple) else str(value)
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


@dataclasses.dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def kill(self) -> None:
        """SIGKILL the process and everything it started (gunicorn's worker, say)."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.popen.poll() is None:
            self.popen.wait(10)

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def spawn(name: str, settings: Settings, log_dir: Path, wrapper: tuple[str, ...] = (), **extra_env: str) -> Proc:
    """Start service `name`; `wrapper` prefixes its command line (e.g. `faketime +600s`)."""
    log = log_dir / f"{name}-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        popen = subprocess.Popen([*wrapper, *argv(name, settings)], cwd=ROOT, preexec_fn=die_with_parent, env=env_of(settings, **extra_env),
                                 stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Proc(name, popen, log)




def start_function(name: str, settings: Settings, log_dir: Path, wrapper: tuple[str, ...] = (),
                   **extra_env: str) -> tuple[Proc, str]:
    """Start one HTTP function under gunicorn and wait for its /healthz."""
    port = settings.enqueue_port if name == "enqueue" else settings.status_port
    proc = spawn(name, settings, log_dir, wrapper, **extra_env)
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.popen.poll() is not None:
            raise AssertionError(f"{name} exited early:\n{proc.output()}")
        try:
            return httpx.get(base + "/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        wait_until(up, timeout=20, message=f"{name} /healthz")
    except BaseException:
        proc.kill()
        raise
    return proc, base


def stop(proc: Proc, timeout: float = 15) -> None:
    """SIGTERM the process group (a wrapper such as faketime may sit between us and gunicorn),
    then SIGKILL whatever of the group is left."""
    if proc.popen.poll() is None:
        try:
            os.killpg(proc.popen.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
    proc.kill()  # whatever of the group is left
