"""The operator commands (`taskbus queues`, `tasks`, `show`, `cancel`, ...) as an operator runs
them: `python -m taskbus` processes configured by environment variables only, against the
session's real Valkey and a real worker process. Each command's `--json` output (exactly one JSON
document on stdout) and exit code: 0 done, 1 not found or refused, 2 usage or a bad setting,
3 Redis unavailable (one line on stderr, never a traceback), 130 a re-drive left to the workers."""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from local.embedded import free_port
from taskbus.admin import Admin
from taskbus.admin.redrive import Redrives
from taskbus.client import Client
from taskbus.settings import Settings
from testkit.env import ROOT, env_of
from testkit.procs import Proc, spawn, wait_until

TASKBUS = [sys.executable, "-m", "taskbus"]
ACTOR = f"cli:{getpass.getuser()}"


@dataclasses.dataclass
class Site:
    """One live worker serving `served` on the session's Valkey, for the tests that need a task to
    run; the others use `base_settings` and a queue of their own, which no worker serves (its
    tasks stay queued)."""

    settings: Settings
    served: str
    worker: Proc
    logs: Path


@pytest.fixture(scope="module")
def site(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    served = f"cli-{uuid.uuid4().hex[:10]}"
    settings = dataclasses.replace(base_settings, queues=(served,))
    logs = tmp_path_factory.mktemp("cli-ops")
    worker = spawn("worker", settings, logs)
    with contextlib.closing(Admin(settings)) as admin:
        wait_until(lambda: admin.workers(served), timeout=15, message="the worker's announcement", proc=worker)
    yield Site(settings, served, worker, logs)
    worker.kill()


@pytest.fixture
def client(base_settings: Settings) -> Iterator[Client]:
    with Client(base_settings) as client:
        yield client


def taskbus(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`python -m taskbus ARGS` with the environment of `settings` (and `env`), as a user runs it."""
    return subprocess.run([*TASKBUS, *args], cwd=ROOT, env={**env_of(settings), **env}, capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)


def as_json(settings: Settings, *args: str, code: int = 0, **env: str) -> Any:
    """Run `taskbus ARGS --json`, check its exit code, and decode its stdout as one JSON document
    (json.loads refuses anything after the first)."""
    done = taskbus(settings, *args, "--json", **env)
    assert done.returncode == code, f"exit {done.returncode}, expected {code}:\n{done.stdout}\n{done.stderr}"
    if code:
        assert_one_line(done.stderr)
    return json.loads(done.stdout)


def assert_one_line(stderr: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("taskbus: "), stderr
    assert "Traceback" not in stderr


def test_enqueue_list_show_cancel_retry(base_settings: Settings, queue: str) -> None:
    enqueued = as_json(base_settings, "enqueue", "echo", '{"n": 1}', "--queue", queue)
    assert (enqueued["status"], enqueued["created"]) == ("queued", True)
    task_id = enqueued["id"]
    assert task_id.startswith(f"{queue}~")

    page = as_json(base_settings, "tasks", queue, "--state", "queued")
    assert [row["id"] for row in page["tasks"]] == [task_id]
    assert page["next_cursor"] is None

    task = as_json(base_settings, "show", task_id)
    assert (task["status"], task["payload"], task["history"]) == ("queued", {"n": 1}, [])

    cancelled = as_json(base_settings, "cancel", task_id)
    assert (cancelled["outcome"], cancelled["task"]["status"]) == ("cancelled", "cancelled")
    refused = as_json(base_settings, "cancel", task_id, code=1)
    assert refused["error"]["code"] == "conflict" and refused["error"]["status"] == "cancelled"

    assert as_json(base_settings, "retry", task_id)["status"] == "queued"
    shown = taskbus(base_settings, "show", task_id)
    assert shown.returncode == 0, shown.stderr
    with contextlib.closing(Admin(base_settings)) as admin:
        audit = admin.task(task_id)["audit"]  # type: ignore[index]
    assert [(entry["action"], entry["actor"]) for entry in audit] == [("cancel", ACTOR), ("retry", ACTOR)]
    assert "audit" in shown.stdout and ACTOR in shown.stdout

    missing = as_json(base_settings, "show", f"{queue}~{'0' * 32}", code=1)
    assert missing["error"]["code"] == "not_found"


def test_a_failed_task_its_traceback_and_its_redrive(site: Site, r: redis.Redis) -> None:
    counter = f"cli-runs-{uuid.uuid4().hex[:8]}"
    done = as_json(site.settings, "enqueue", "permanent", json.dumps({"key": counter}), "--queue", site.served,
                   "--wait", "15")
    task_id, task = done["id"], done["task"]
    assert task["status"] == "failed" and task["error"]["type"] == "PermanentError", task

    shown = taskbus(site.settings, "show", task_id)
    assert shown.returncode == 0, shown.stderr
    assert "Traceback (most recent call last)" in shown.stdout and "the input can never work" in shown.stdout

    dead = as_json(site.settings, "tasks", site.served, "--state", "failed")  # `failed` reads as `dead`
    assert task_id in [row["id"] for row in dead["tasks"]]

    filters = ("--error-type", "PermanentError", "--type", "permanent")
    assert as_json(site.settings, "redrive", site.served, *filters, "--dry-run") == {"dry_run": True, "matched": 1}
    job = as_json(site.settings, "redrive", site.served, *filters, "--rate", "100")
    assert (job["state"], job["moved"], job["total"]) == ("done", 1, 1), job
    wait_until(lambda: r.hget(counter, task_id) == "2", timeout=15, message="the re-driven task's second run")


def test_cancel_of_a_running_task_says_cancelling(site: Site, client: Client, r: redis.Redis) -> None:
    marks = f"cli-marks-{uuid.uuid4().hex[:8]}"
    task_id = client.enqueue("until_cancelled", {"key": marks, "seconds": 20}, queue=site.served).id
    wait_until(lambda: r.hget(marks, task_id) == "running", timeout=15, message="the handler running")
    cancelling = as_json(site.settings, "cancel", task_id)
    assert cancelling["outcome"] == "cancelling", cancelling
    done = client.wait(task_id, 15)
    assert done is not None and done["status"] == "cancelled", done  # the handler saw ctx.cancelled


def test_pause_and_resume_show_in_the_overview(base_settings: Settings, queue: str, client: Client) -> None:
    client.enqueue("echo", queue=queue)  # a queue is known once a task was enqueued to it
    assert as_json(base_settings, "pause", queue)["paused"] is True
    overview = {row["queue"]: row for row in as_json(base_settings, "queues")["queues"]}
    assert overview[queue]["paused"] is True and overview[queue]["counts"]["queued"] == 1
    assert as_json(base_settings, "resume", queue)["paused"] is False
    table = taskbus(base_settings, "queues")
    assert table.returncode == 0, table.stderr
    assert queue in table.stdout


def test_purge_is_refused_without_yes(base_settings: Settings, queue: str, client: Client) -> None:
    ids = [client.enqueue("echo", queue=queue).id for _ in range(2)]
    refused = as_json(base_settings, "purge", queue, "--state", "queued", code=2)
    assert refused["error"]["code"] == "confirmation_required"
    assert "--yes" in refused["error"]["message"] and "2 queued" in refused["error"]["message"]
    assert [client.get(task_id)["status"] for task_id in ids] == ["queued", "queued"]  # type: ignore[index]

    assert as_json(base_settings, "purge", queue, "--state", "queued", "--yes") == {"queue": queue, "state": "queued",
                                                                             "purged": 2}
    assert [client.get(task_id)["status"] for task_id in ids] == ["cancelled", "cancelled"]  # type: ignore[index]


def test_workers_lists_the_live_worker(site: Site) -> None:
    rows = as_json(site.settings, "workers", "--queue", site.served)["workers"]
    assert [row["pid"] for row in rows] == [site.worker.pid], rows
    assert site.served in rows[0]["queues"] and "permanent" in rows[0]["types"]


def test_ctrl_c_stops_following_a_redrive_which_goes_on(site: Site, client: Client) -> None:
    """Four dead letters re-driven at 0.5/s (8 s: time enough to interrupt it, even on a loaded
    machine); SIGINT once the first moved: exit 130, saying the job goes on in the workers (it is
    not cancelled). `flaky3` tasks, so the other re-drive test's filter (`permanent`) never sees these."""
    ids = [client.enqueue("flaky3", queue=site.served).id for _ in range(4)]
    wait_until(lambda: all(client.get(i)["status"] == "failed" for i in ids),  # type: ignore[index]
               timeout=15, message="four dead letters")
    argv = [*TASKBUS, "redrive", site.served, "--type", "flaky3", "--rate", "0.5"]
    proc = Proc("redrive", argv, env_of(site.settings), site.logs / f"redrive-{uuid.uuid4().hex[:6]}.log")
    with contextlib.closing(Redrives(site.settings)) as redrives:
        job = wait_until(lambda: next((j for j in redrives.list(site.served) if j["moved"] >= 1
                                       and j["filters"]["task_type"] == "flaky3"), None), timeout=15,
                         message="the re-drive's first step", proc=proc)
        assert job["state"] == "running", job
        proc.signal(signal.SIGINT)
        assert proc.wait(15) == 130, proc.output()
        assert "goes on in the workers" in proc.output()
        assert redrives.get(job["id"])["state"] != "cancelled"  # type: ignore[index]


@pytest.mark.parametrize("args", [("queues",), ("enqueue", "echo")])
def test_an_unreachable_redis_exits_3(base_settings: Settings, args: tuple[str, ...]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    failed = as_json(base_settings, *args, code=3, REDIS_URL=url)
    assert failed["error"]["code"] == "unavailable"
    assert url in failed["error"]["message"]


def test_a_bad_setting_exits_2_with_one_line(base_settings: Settings) -> None:
    done = taskbus(base_settings, "queues", CONCURRENCY="abc")
    assert done.returncode == 2, done.stderr
    assert_one_line(done.stderr)
    assert "CONCURRENCY='abc'" in done.stderr and "expected an integer" in done.stderr


USAGE_ERRORS = {
    "payload not JSON": ("enqueue", "echo", "{not json"),
    "not a time": ("redrive", "q", "--since", "yesterday"),
}


@pytest.mark.parametrize("args", USAGE_ERRORS.values(), ids=USAGE_ERRORS)
def test_usage_errors_exit_2(base_settings: Settings, args: tuple[str, ...]) -> None:
    done = taskbus(base_settings, *args, REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")  # refused before Redis
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "Error:" in done.stderr
