"""`make up` is `python -m local`: the embedded Valkey, the three functions and a worker, each test
on its own run directory and free ports (never the default 6399). A task sent the README's way
runs; the signed sample webhook lands from a terminal that has none of the stack's
environment; a second stack on the same run directory refuses in one line; Ctrl-C with a task
in flight loses no outcome and stops Valkey last; a restart listens on the same port and names
a data_lost flag with the command that clears it; `--help`
starts nothing; and a stack that cannot start says why in one line."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import redis

from local.embedded import free_port
from testkit.env import ROOT, clean_env
from testkit.procs import Proc, wait_until


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {**clean_env(), "LOCAL_RUN_DIR": str(tmp_path / "run"), "LOCAL_REDIS_PORT": str(free_port()),
            "ENQUEUE_PORT": str(free_port()), "STATUS_PORT": str(free_port()), "CONSOLE_PORT": str(free_port()),
            "WEB_WORKERS": "1", **extra}


class Stack:
    """One `python -m local` and what its `ready` line says."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.proc = Proc("make up", [sys.executable, "-m", "local"], env, log)
        wait_until(lambda: "ready: " in self.proc.output(), timeout=30, interval=0.1,
                   message="the local stack to print ready", proc=self.proc)
        text = self.proc.output()
        self.enqueue = re.search(r"enqueue on (http://\S+),", text).group(1)  # type: ignore[union-attr]
        self.status = re.search(r"status on (http://\S+),", text).group(1)  # type: ignore[union-attr]
        self.redis_url = re.search(r"Redis at (redis://\S+)", text).group(1)  # type: ignore[union-attr]
        self.console = re.search(r"console on (http://\S+)/ ", text).group(1)  # type: ignore[union-attr]

    def ctrl_c(self) -> int:
        os.killpg(self.proc.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends: the foreground group
        return self.proc.wait(30)


def _run(argv: list[str], env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def _bare_terminal(tmp_path: Path) -> dict[str, str]:
    """Another terminal: none of the stack's variables, only where its run directory is."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path),
            "LOCAL_RUN_DIR": str(tmp_path / "run")}


@pytest.mark.timeout(90)
def test_make_up_serves_tasks_and_webhooks_refuses_a_second_stack_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    env = _env(tmp_path)
    stack = Stack(env, tmp_path / "up.log")
    try:
        assert stack.redis_url == f"redis://127.0.0.1:{env['LOCAL_REDIS_PORT']}/0"  # the fixed port, not a random one
        assert (tmp_path / "run" / "valkey").is_dir()  # the embedded server keeps its data there

        # A second stack on the same run directory (other ports: the lock refuses it, not a port clash).
        began = time.monotonic()
        second = _run([sys.executable, "-m", "local"], _env(tmp_path), timeout=20)
        assert second.returncode != 0
        assert time.monotonic() - began < 10
        lines = (second.stdout + second.stderr).strip().splitlines()
        assert len(lines) == 1, lines
        assert f"pid {stack.proc.pid}" in lines[0] and "already running" in lines[0], lines[0]
        assert stack.proc.alive()

        with httpx.Client(timeout=30) as http:  # the first stack is unharmed
            reply = http.post(stack.enqueue + "/tasks", json={"type": "echo", "payload": {"hello": "world"}})
            assert reply.status_code == 202, reply.text
            done = http.get(stack.status + f"/tasks/{reply.json()['id']}", params={"wait": 10}).json()
            assert (done["status"], done["result"]) == ("succeeded", {"hello": "world"})

            # The console, keyed by a generated key the banner points to (never prints), kept 0600.
            key_file = tmp_path / "run" / "admin-key"
            assert f"the admin key is in {key_file}" in stack.proc.output()
            assert key_file.stat().st_mode & 0o777 == 0o600
            label, _, key = key_file.read_text().strip().partition(":")
            assert label == "local" and len(key) >= 32 and key not in stack.proc.output()
            assert http.get(stack.console + "/api/queues").status_code == 401
            queues = http.get(stack.console + "/api/queues", headers={"Authorization": f"Bearer {key}"})
            assert queues.status_code == 200 and "default" in [q["queue"] for q in queues.json()["queues"]]

        hook = _run([sys.executable, "-m", "local", "send-webhook", "github", "push"], _bare_terminal(tmp_path))
        assert hook.returncode == 0, hook.stdout + hook.stderr
        assert hook.stdout.startswith("202"), hook.stdout
        wait_until(lambda: "github.push" in stack.proc.output() and "task succeeded" in stack.proc.output(),
                   timeout=10, message="the worker running the github.push task")

        assert stack.ctrl_c() == 0, stack.proc.tail(40)
        with pytest.raises(httpx.HTTPError):
            httpx.get(stack.enqueue + "/healthz", timeout=1)
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(stack.redis_url, socket_connect_timeout=1).ping()
        assert not (tmp_path / "run" / "stack.json").exists()  # no stale pointer for send-webhook
        gone = _run([sys.executable, "-m", "local", "send-webhook", "github"], _bare_terminal(tmp_path))
        assert gone.returncode == 1 and "no local stack is running" in gone.stderr, gone.stderr
    finally:
        stack.proc.kill()


@pytest.mark.timeout(90)
def test_ctrl_c_with_a_task_in_flight_records_its_outcome_and_a_restart_keeps_the_port(tmp_path: Path) -> None:
    env = _env(tmp_path)
    first = Stack(env, tmp_path / "up-1.log")
    try:
        outside = redis.Redis.from_url(first.redis_url, decode_responses=True)  # an outside client of the stack
        assert outside.ping()
        reply = httpx.post(first.enqueue + "/tasks", json={"type": "sleep", "payload": {"seconds": 2}}, timeout=10)
        assert reply.status_code == 202, reply.text
        task_id = reply.json()["id"]
        wait_until(lambda: re.search(rf'"task running","task_id":"{task_id}"', first.proc.output()), timeout=10,
                   message="the worker starting the sleep task")

        flag = "taskbus:{default}:data-lost"  # as a worker sets it after finding its group gone
        outside.set(flag, "consumer group recreated by a test", ex=3600)
        assert first.ctrl_c() == 0, first.proc.tail(40)
        text = first.proc.output()
        outcome = text.find(f'"task succeeded","task_id":"{task_id}"')
        worker_exit, valkey_stop = text.find("worker exited (rc=0)"), text.find("Received SIGTERM")
        assert -1 < outcome < worker_exit < valkey_stop, text[-4000:]  # drained, then Valkey stopped last
        assert text.rfind("enqueue exited") < worker_exit and text.rfind("status exited") < worker_exit
        assert -1 < text.rfind("console exited") < worker_exit
    finally:
        first.proc.kill()

    second = Stack(env, tmp_path / "up-2.log")  # same run directory, same environment
    try:
        assert second.redis_url == first.redis_url
        assert outside.hget(f"taskbus:{{default}}:task:{task_id.split('~')[1]}", "status") == "succeeded"  # reconnected
        record = httpx.get(second.status + f"/tasks/{task_id}", timeout=10).json()
        assert (record["status"], record["result"]) == ("succeeded", {"slept_s": 2.0})

        # The flag survived too: ready anyway, and a warning gives the command that clears it.
        assert httpx.get(second.enqueue + "/healthz", timeout=5).json()["error"]["code"] == "data_lost"
        clear = re.search(r'python -c "([^"]+)"', second.proc.output())
        assert clear and flag in clear.group(1), second.proc.tail(20)
        assert _run([sys.executable, "-c", clear.group(1)], _bare_terminal(tmp_path)).returncode == 0
        assert httpx.get(second.enqueue + "/healthz", timeout=5).status_code == 200
        assert second.ctrl_c() == 0, second.proc.tail(40)
    finally:
        second.proc.kill()


def test_help_prints_usage_and_starts_nothing(tmp_path: Path) -> None:
    env = _env(tmp_path)
    for argv in (["--help"], ["send-webhook", "--help"]):
        shown = _run([sys.executable, "-m", "local", *argv], env, timeout=20)
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith("usage: python -m local"), shown.stdout
    assert "LOCAL_REDIS_PORT" in _run([sys.executable, "-m", "local", "--help"], env).stdout
    assert not (tmp_path / "run").exists()  # no lock, no secrets, no server data
    with pytest.raises(redis.ConnectionError):
        redis.Redis.from_url(f"redis://127.0.0.1:{env['LOCAL_REDIS_PORT']}", socket_connect_timeout=1).ping()


def test_a_stack_that_cannot_start_says_why_in_one_line(tmp_path: Path) -> None:
    closed = free_port()
    began = time.monotonic()
    refused = _run([sys.executable, "-m", "local"], _env(tmp_path, REDIS_URL=f"redis://127.0.0.1:{closed}/0"))
    assert refused.returncode == 1
    assert time.monotonic() - began < 15
    assert refused.stderr.strip().splitlines() == [
        f"make up: not ready after 5 s: Redis at redis://127.0.0.1:{closed}/0 refused connections"]

    broken = _run([sys.executable, "-m", "local"], _env(tmp_path, HANDLERS="no_such_handlers"), timeout=60)
    assert broken.returncode == 1
    cause = broken.stderr.strip().splitlines()[-1]  # the worker's own last error line, whatever its wording
    assert cause.startswith("make up: worker exited with code ") and "no_such_handlers" in cause, broken.stderr
    assert "valkey exited (rc=0)" in broken.stdout  # what had started was stopped

    env = _env(tmp_path)
    with socket.create_server(("127.0.0.1", int(env["ENQUEUE_PORT"]))):  # someone else's server
        taken = _run([sys.executable, "-m", "local"], env)
    assert taken.returncode == 1
    assert taken.stderr.strip().splitlines() == [
        f"make up: port {env['ENQUEUE_PORT']} on 127.0.0.1 (ENQUEUE_PORT) is not free: Address already in use; "
        "stop what uses it or set ENQUEUE_PORT"]

