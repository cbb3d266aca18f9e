"""`make up` is `python -m local`: the embedded Valkey, both functions and a worker. A task
sent the README's way runs, the signed sample webhook lands, and Ctrl-C stops every process."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import redis

from local.embedded import free_port
from testkit.env import ROOT, clean_env
from testkit.procs import Proc, wait_until


@pytest.mark.timeout(120)
def test_make_up_runs_a_task_and_a_webhook_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    env = {**clean_env(), "ENQUEUE_PORT": str(free_port()), "STATUS_PORT": str(free_port()),
           "LOCAL_RUN_DIR": str(tmp_path / "run")}
    log = tmp_path / "up.log"
    up = Proc("make up", [sys.executable, "-m", "local"], env, log)
    try:
        wait_until(lambda: "ready: " in up.output(), timeout=60, interval=0.1,
                   message="the local stack to print ready", proc=up)
        text = up.output()
        assert up.alive(), text
        enqueue = re.search(r"enqueue on (http://\S+),", text).group(1)  # type: ignore[union-attr]
        status = re.search(r"status on (http://\S+),", text).group(1)  # type: ignore[union-attr]
        redis_url = re.search(r"Redis at (redis://\S+)", text).group(1)  # type: ignore[union-attr]
        assert (tmp_path / "run" / "valkey").is_dir()  # the embedded server keeps its data there

        with httpx.Client(timeout=30) as http:
            reply = http.post(enqueue + "/tasks", json={"type": "echo", "payload": {"hello": "world"}})
            assert reply.status_code == 202, reply.text
            done = http.get(status + f"/tasks/{reply.json()['id']}", params={"wait": 10}).json()
            assert (done["status"], done["result"]) == ("succeeded", {"hello": "world"})

        hook = subprocess.run([sys.executable, "-m", "local", "send-webhook", "github", "push"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=30)
        assert hook.returncode == 0, hook.stdout + hook.stderr
        assert hook.stdout.startswith("202"), hook.stdout
        wait_until(lambda: "github.push" in up.output(), timeout=10,
                   message="the worker logging the github.push task")

        os.killpg(up.pid, signal.SIGINT)  # what Ctrl-C in the terminal sends
        assert up.wait(30) == 0 or up.popen.returncode in (-signal.SIGINT, 130), up.output()[-3000:]
        with pytest.raises(httpx.HTTPError):
            httpx.get(enqueue + "/healthz", timeout=1)
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(redis_url, socket_connect_timeout=1).ping()
    finally:
        up.kill()
