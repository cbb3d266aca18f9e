"""Every entry point a user starts, at its first-hour edges: `--help` prints usage and starts
nothing; a bad setting exits 3 with one line that names the variable, the value and what is
expected (no traceback); an unreachable Redis is said in one line within 5 s and the service goes
on starting; ENQUEUE_FSYNC=true refuses a Redis that cannot fsync; the enqueue function warns
when STATUS_BASE_URL is unset.

Entry points: `taskbus serve enqueue`, `taskbus worker` (as `python -m taskbus`: the console
script of a real install is run by tests/e2e/test_package.py), `python -m worker_fn`, and the
plain `functions-framework --source functions/enqueue/main.py --target enqueue` CLI."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from local.embedded import EmbeddedServer, free_port
from taskbus.preflight import EXIT_REFUSED
from testkit.env import ROOT, clean_env
from testkit.procs import Proc, wait_until

TASKBUS = [sys.executable, "-m", "taskbus"]
FUNCTIONS_FRAMEWORK = str(Path(sys.executable).parent / "functions-framework")
ENTRY_POINTS = {
    "taskbus serve enqueue": [*TASKBUS, "serve", "enqueue"],
    "taskbus worker": [*TASKBUS, "worker"],
    "python -m worker_fn": [sys.executable, "-m", "worker_fn"],
    "functions-framework": [FUNCTIONS_FRAMEWORK, "--source", "functions/enqueue/main.py", "--target", "enqueue"],
}
WORKER_ENTRY_POINTS = ("taskbus worker", "python -m worker_fn")
BAD_SETTINGS = {  # env -> what the one line must say
    "CONCURRENCY=abc": ({"CONCURRENCY": "abc"}, ["CONCURRENCY='abc'", "expected an integer"]),
    "LEASE_S=-1": ({"LEASE_S": "-1"}, ["LEASE_S='-1'", "expected a number > 0"]),
    "CHANNEL=rabbitmq": ({"CHANNEL": "rabbitmq"}, ["CHANNEL='rabbitmq'", "expected redis or kafka"]),
    "REDIS_URL=host:port": ({"REDIS_URL": "localhost:6379"}, ["REDIS_URL='localhost:6379'", "expected redis://"]),
}
BAD_HANDLERS = {
    "missing module": ({"HANDLERS": "myapp.missing"}, ["HANDLERS='myapp.missing'", "no module named", "expected"]),
    "no registry": ({"HANDLERS": "json"}, ["HANDLERS='json'", "has no `registry`", "expected"]),
}


def env_with(**extra: str) -> dict[str, str]:
    return {**clean_env(), "PYTHONPATH": str(ROOT), "HOST": "127.0.0.1", **extra}


def run(argv: list[str], env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


@contextlib.contextmanager
def listener() -> Iterator[socket.socket]:
    """A bound, listening socket: as REDIS_URL, it shows whether anything tried to connect."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def connected(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


# --- --help --------------------------------------------------------------------------------

HELP = {
    "taskbus --help": [*TASKBUS, "--help"],
    "taskbus -h": [*TASKBUS, "-h"],
    "taskbus serve --help": [*TASKBUS, "serve", "--help"],
    "taskbus serve enqueue --help": [*TASKBUS, "serve", "enqueue", "--help"],
    "taskbus serve status --help": [*TASKBUS, "serve", "status", "--help"],
    "taskbus worker --help": [*TASKBUS, "worker", "--help"],
    "python -m worker_fn --help": [sys.executable, "-m", "worker_fn", "--help"],
    "python -m worker_fn -h": [sys.executable, "-m", "worker_fn", "-h"],
}


@pytest.mark.parametrize("name", HELP)
def test_help_prints_usage_and_starts_nothing(name: str) -> None:
    """Exit 0 with usage on stdout; nothing connects to REDIS_URL, nothing listens on PORT (a
    served function or worker would still be running: the call returns only once the process
    has exited, and its port is free again)."""
    port = free_port()
    with listener() as redis_socket:
        url = f"redis://127.0.0.1:{redis_socket.getsockname()[1]}/0"
        done = run(HELP[name], env_with(REDIS_URL=url, PORT=str(port), HANDLERS="json"), timeout=20)
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith("Usage: "), done.stdout
        assert done.stderr == ""
        assert not connected(redis_socket), f"{name} connected to Redis"
    with socket.socket() as probe:
        assert probe.connect_ex(("127.0.0.1", port)) != 0, f"{name} left something listening on PORT"


def test_the_help_of_each_command_names_its_settings() -> None:
    assert "enqueue|status" in run([*TASKBUS, "serve", "--help"], env_with()).stdout
    worker_help = run([sys.executable, "-m", "worker_fn", "--help"], env_with()).stdout
    assert worker_help.startswith("Usage: python -m worker_fn")
    assert "HANDLERS" in worker_help and "PORT" in worker_help


# --- bad settings --------------------------------------------------------------------------

def assert_one_line_refusal(done: subprocess.CompletedProcess[str], expected: list[str]) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == EXIT_REFUSED, output
    assert "Traceback" not in output, output
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, output
    for fragment in expected:
        assert fragment in lines[0], (fragment, lines[0])


@pytest.mark.parametrize("case", BAD_SETTINGS)
@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_a_bad_setting_exits_with_one_line(entry: str, case: str, server: EmbeddedServer) -> None:
    env, expected = BAD_SETTINGS[case]
    done = run(ENTRY_POINTS[entry], env_with(**{"REDIS_URL": server.url, "PORT": str(free_port()), **env}))
    assert_one_line_refusal(done, expected)


def test_a_bad_serve_path_exits_with_one_line(server: EmbeddedServer) -> None:
    done = run([*TASKBUS, "serve", "status"], env_with(REDIS_URL=server.url, PORT=str(free_port()), SERVE_PATH="uwsgi"))
    assert_one_line_refusal(done, ["SERVE_PATH='uwsgi'", "expected one of asgi, wsgi"])


@pytest.mark.parametrize("case", BAD_HANDLERS)
@pytest.mark.parametrize("entry", WORKER_ENTRY_POINTS)
def test_bad_handlers_exit_with_one_line(entry: str, case: str, server: EmbeddedServer) -> None:
    env, expected = BAD_HANDLERS[case]
    done = run(ENTRY_POINTS[entry], env_with(REDIS_URL=server.url, **env))
    assert_one_line_refusal(done, expected)


def test_a_handlers_module_that_fails_to_import_shows_its_own_traceback(tmp_path: Path,
                                                                       server: EmbeddedServer) -> None:
    """Not a setting but a bug in the user's module: the one line would hide where it is."""
    (tmp_path / "brokenapp.py").write_text("import no_such_dependency_xyz\n")
    done = subprocess.run([*TASKBUS, "worker"], cwd=tmp_path, capture_output=True, text=True, timeout=30,
                          env=env_with(REDIS_URL=server.url, HANDLERS="brokenapp"))
    assert done.returncode != 0
    assert "Traceback" in done.stderr and "no_such_dependency_xyz" in done.stderr


# --- an unreachable Redis ------------------------------------------------------------------

UNREACHABLE = {
    "taskbus serve status": [*TASKBUS, "serve", "status"],
    "taskbus worker": [*TASKBUS, "worker"],
    "functions-framework": ENTRY_POINTS["functions-framework"],
}


@pytest.mark.parametrize("entry", UNREACHABLE)
def test_an_unreachable_redis_is_said_in_one_line_within_5_s_and_the_service_starts(
        entry: str, tmp_path: Path) -> None:
    closed = free_port()
    url = f"redis://:s3cret-pw@127.0.0.1:{closed}/0"
    port = free_port()
    started = time.monotonic()
    proc = Proc(entry, UNREACHABLE[entry], env_with(REDIS_URL=url, PORT=str(port), WEB_WORKERS="1"),
                tmp_path / "service.log")
    try:
        line = wait_until(lambda: next((ln for ln in proc.output().splitlines() if "is unreachable" in ln), None),
                          timeout=5, message="the unreachable-Redis line", proc=proc)
        assert time.monotonic() - started < 5
        assert f"redis://:***@127.0.0.1:{closed}/0" in line and "Connection refused" in line
        assert "s3cret-pw" not in proc.output()
        assert "Traceback" not in proc.output()
        # it goes on starting: the function answers (503 until Redis is back), the worker has a /healthz
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _status(base + "/healthz") == 503, timeout=15, message="/healthz 503", proc=proc)
        assert proc.alive()
    finally:
        proc.stop()


def test_a_redis_that_never_answers_is_said_within_5_s(tmp_path: Path) -> None:
    """A blackholed Redis (the TCP handshake completes, no reply ever comes)."""
    with listener() as silent:
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        started = time.monotonic()
        proc = Proc("worker", [*TASKBUS, "worker"], env_with(REDIS_URL=url), tmp_path / "worker.log")
        try:
            line = wait_until(lambda: next((ln for ln in proc.output().splitlines() if "is unreachable" in ln), None),
                              timeout=5, message="the unreachable-Redis line", proc=proc)
            assert time.monotonic() - started < 5
            assert url in line and "Timeout" in line
        finally:
            proc.stop()


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.HTTPError:
        return 0


# --- ENQUEUE_FSYNC against a Redis that cannot fsync ---------------------------------------

class ValkeyWithoutWaitaof(EmbeddedServer):
    """A real Valkey whose WAITAOF is renamed away: it answers as Redis before 7.2 (Debian's
    redis-server 7.0, say) does, `ERR unknown command 'WAITAOF'`."""

    def argv(self) -> list[str]:
        return [*super().argv(), "--rename-command", "WAITAOF", ""]


@pytest.fixture
def no_waitaof(tmp_path: Path) -> Iterator[EmbeddedServer]:
    server = ValkeyWithoutWaitaof(tmp_path / "old-redis")
    server.start()
    yield server
    server.kill()


FSYNC_ENTRY_POINTS = ("taskbus serve enqueue", "functions-framework")


@pytest.mark.parametrize("entry", FSYNC_ENTRY_POINTS)
def test_enqueue_fsync_refuses_a_redis_without_waitaof(entry: str, no_waitaof: EmbeddedServer) -> None:
    done = run(ENTRY_POINTS[entry], env_with(REDIS_URL=no_waitaof.url, ENQUEUE_FSYNC="true", PORT=str(free_port())))
    assert_one_line_refusal(done, ["ENQUEUE_FSYNC=true needs WAITAOF", "7.2", no_waitaof.url, "unknown command"])


@pytest.mark.parametrize("entry", FSYNC_ENTRY_POINTS)
def test_enqueue_fsync_refuses_a_redis_without_append_only_file(
        entry: str, fresh_valkey: Callable[..., EmbeddedServer]) -> None:
    server = fresh_valkey(appendonly=False)
    done = run(ENTRY_POINTS[entry], env_with(REDIS_URL=server.url, ENQUEUE_FSYNC="true", PORT=str(free_port())))
    assert_one_line_refusal(done, ["ENQUEUE_FSYNC=true needs Redis's append-only file", "appendonly no"])


def test_without_enqueue_fsync_an_old_redis_is_fine(no_waitaof: EmbeddedServer, tmp_path: Path) -> None:
    port = free_port()
    proc = Proc("enqueue", [*TASKBUS, "serve", "enqueue"],
                env_with(REDIS_URL=no_waitaof.url, PORT=str(port), WEB_WORKERS="1"), tmp_path / "enqueue.log")
    try:
        wait_until(lambda: _status(f"http://127.0.0.1:{port}/healthz") == 200, timeout=15,
                   message="/healthz 200", proc=proc)
    finally:
        proc.stop()


# --- STATUS_BASE_URL -----------------------------------------------------------------------

@pytest.mark.parametrize("base_url", ["", "http://status.example:8081"])
def test_the_enqueue_function_warns_when_status_base_url_is_unset(base_url: str, server: EmbeddedServer,
                                                                  tmp_path: Path) -> None:
    port = free_port()
    proc = Proc("enqueue", [*TASKBUS, "serve", "enqueue"],
                env_with(REDIS_URL=server.url, PORT=str(port), WEB_WORKERS="1", STATUS_BASE_URL=base_url),
                tmp_path / "enqueue.log")
    try:
        wait_until(lambda: _status(f"http://127.0.0.1:{port}/healthz") == 200, timeout=15,
                   message="/healthz 200", proc=proc)
        warned = "STATUS_BASE_URL is not set" in proc.output()
        assert warned == (not base_url), proc.output()
        if warned:
            assert "deployed apart" in proc.output()
    finally:
        proc.stop()


# --- the console without admin keys ---------------------------------------------------------

CONSOLE_ENTRY_POINTS = {
    "taskbus serve console": [*TASKBUS, "serve", "console"],
    "taskbus serve console --wsgi": [*TASKBUS, "serve", "console", "--wsgi"],
    "functions-framework": [FUNCTIONS_FRAMEWORK, "--source", "functions/console/main.py", "--target", "console"],
}


@pytest.mark.parametrize("entry", CONSOLE_ENTRY_POINTS)
def test_the_console_refuses_to_start_without_admin_keys(entry: str, server: EmbeddedServer) -> None:
    with listener() as redis_socket:  # refused before anything reaches Redis
        url = f"redis://127.0.0.1:{redis_socket.getsockname()[1]}/0"
        done = run(CONSOLE_ENTRY_POINTS[entry], env_with(REDIS_URL=url, PORT=str(free_port()), WEB_WORKERS="1"))
        assert not connected(redis_socket)
    assert_one_line_refusal(done, ["the console needs ADMIN_KEYS (or ADMIN_KEYS_FILE)", "CONSOLE_READ_ONLY=true"])


def test_an_unreadable_admin_keys_file_is_said_in_one_line(server: EmbeddedServer, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-file"
    done = run([*TASKBUS, "serve", "console"], env_with(REDIS_URL=server.url, ADMIN_KEYS_FILE=str(missing)))
    assert_one_line_refusal(done, [f"ADMIN_KEYS_FILE={str(missing)!r} cannot be read"])


def test_a_read_only_console_without_keys_starts_and_warns(server: EmbeddedServer, tmp_path: Path) -> None:
    port = free_port()
    proc = Proc("console", [*TASKBUS, "serve", "console"],
                env_with(REDIS_URL=server.url, PORT=str(port), WEB_WORKERS="1", CONSOLE_READ_ONLY="true"),
                tmp_path / "console.log")
    try:
        wait_until(lambda: _status(f"http://127.0.0.1:{port}/api/workers") == 200, timeout=15,
                   message="the open read-only console to answer", proc=proc)
        assert "ADMIN_KEYS is not set: this read-only console" in proc.output()
        refused = httpx.post(f"http://127.0.0.1:{port}/api/queues/q:pause", timeout=5)
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "read_only")
    finally:
        proc.stop()
