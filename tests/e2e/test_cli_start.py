"""Each function started alone the way the README and a new user start it: the plain
`python -m functions_framework --source functions/<name>/main.py --target <name>` CLI and
`python -m worker_fn`, from the repository root, configured by nothing but environment
variables (no gunicorn command line of ours, no test handlers). On both serving paths: the
default targets (`enqueue`, `status`: ASGI, which the CLI detects by itself and serves with
uvicorn workers) and the Flask ones (`enqueue_wsgi`, `status_wsgi`: gthread)."""

from __future__ import annotations

import concurrent.futures
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from local.embedded import EmbeddedServer
from taskbus.keys import Keys
from taskbus.settings import Settings
from testkit.env import env_of
from testkit.functions import fresh_ports, url_of
from testkit.procs import Proc, wait_healthy, wait_until


def cli_function(name: str, target: str, settings: Settings, logs: Path) -> Proc:
    """`python -m functions_framework --source functions/<name>/main.py --target <target>`, up."""
    url = url_of(name, settings)
    argv = [sys.executable, "-m", "functions_framework", "--source", f"functions/{name}/main.py",
            "--target", target, "--port", url.rsplit(":", 1)[1]]
    proc = Proc(name, argv, env_of(settings, changed_only=True), logs / f"{target}.log")
    try:
        wait_healthy(proc, url, 200)
    except BaseException:
        proc.kill()
        raise
    return proc


@pytest.fixture(scope="module", params=["asgi", "wsgi"])
def stack(server: EmbeddedServer, tmp_path_factory: pytest.TempPathFactory,
          request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """enqueue, status and one worker, each as its own CLI process on the session's Valkey,
    given nothing but the variables a user would set (those that differ from the defaults)."""
    logs = tmp_path_factory.mktemp(f"cli-{request.param}")
    settings = fresh_ports(Settings(redis_url=server.url, key_prefix=f"cli-{uuid.uuid4().hex[:8]}"))
    worker = Proc("worker", [sys.executable, "-m", "worker_fn"], env_of(settings, changed_only=True),
                  logs / "worker.log")  # `taskbus worker` is what spawn() runs; this is the module's own path
    procs: list[Proc] = []
    try:
        for name in ("enqueue", "status"):
            procs.append(cli_function(name, name if request.param == "asgi" else f"{name}_wsgi", settings, logs))
        yield {"enqueue": url_of("enqueue", settings), "status": url_of("status", settings),
               "prefix": settings.key_prefix, "serving": request.param}
    finally:
        for proc in procs:
            proc.stop()
        worker.stop()


def test_the_cli_serves_the_default_targets_with_uvicorn(stack: dict[str, str]) -> None:
    """The plain CLI, without --asgi, detects the `aio` target and serves it through uvicorn."""
    server = httpx.get(stack["status"] + "/healthz", timeout=5).headers.get("server", "")
    assert server == ("uvicorn" if stack["serving"] == "asgi" else "gunicorn"), server


def test_a_task_enqueued_through_the_cli_functions_runs_on_the_worker(stack: dict[str, str]) -> None:
    with httpx.Client(timeout=30) as http:
        reply = http.post(stack["enqueue"] + "/tasks", json={"type": "echo", "payload": {"n": 7}})
        assert reply.status_code == 202, reply.text
        task_id = reply.json()["id"]
        done = http.get(stack["status"] + f"/tasks/{task_id}", params={"wait": 20}).json()
        assert done["status"] == "succeeded"
        assert done["result"] == {"n": 7}


def test_the_blog_routes_work_under_the_cli(stack: dict[str, str]) -> None:
    with httpx.Client(timeout=30) as http:
        reply = http.post(stack["enqueue"] + "/enqueue/", json={"hello": "world"})
        assert reply.status_code == 202, reply.text
        assert reply.json()["message"] == "Task published"
        task = http.get(stack["status"] + f"/task/{reply.json()['task_id']}", params={"wait": 20}).json()
        assert (task["status"], task["result"]) == ("succeeded", {"hello": "world"})


@pytest.mark.parametrize("name", ["enqueue", "status"])
def test_gunicorn_refusals_under_the_cli_are_json(stack: dict[str, str], name: str) -> None:
    """The CLI runs its own gunicorn: its refusals of oversized or malformed headers still
    come back in the JSON error shape."""
    with httpx.Client(timeout=10) as http:
        for headers, status, code in [
            ({"X-Big": "b" * 9000}, 431, "headers_too_large"),
            ({f"X-H{i}": "v" for i in range(120)}, 431, "headers_too_large"),
        ]:
            reply = http.get(stack[name] + "/healthz", headers=headers)
            assert reply.status_code == status
            assert reply.headers["content-type"] == "application/json"
            assert reply.json()["error"]["code"] == code
        reply = http.get(stack[name] + "/no/such/path")
        assert reply.status_code == 404
        assert reply.json()["error"]["code"] == "not_found"


def test_long_polls_under_the_cli_do_not_starve_other_requests(stack: dict[str, str], server: EmbeddedServer) -> None:
    """The CLI's gunicorn would run 4 threads per CPU, each long-poll holding one: the Flask
    target gives it STATUS_THREADS instead; the ASGI target holds no thread. 24 long-polls
    wait at once (counted by their subscriptions in Redis), and a health check is still answered."""
    polls = 24
    with httpx.Client(timeout=30) as http:
        reply = http.post(stack["enqueue"] + "/tasks/batch", json={"tasks": [{"type": "echo", "delay_s": 60}] * polls})
        assert reply.status_code == 200, reply.text
        task_ids = [item["id"] for item in reply.json()["results"]]
    channels = [Keys(stack["prefix"]).events(t) for t in task_ids]
    r = redis.Redis.from_url(server.url, decode_responses=True)

    def waiting() -> int:
        """Long-polls waiting now: one task each, so one subscribed channel each (the ASGI
        path shares one connection among them, the Flask path has one per thread)."""
        return sum(1 for n in dict(r.pubsub_shardnumsub(*channels)).values() if n > 0)

    def long_poll(task_id: str) -> str:
        with httpx.Client(timeout=30) as http:
            return str(http.get(stack["status"] + f"/tasks/{task_id}", params={"wait": 8}).json()["status"])

    with concurrent.futures.ThreadPoolExecutor(polls) as pool:
        answers = pool.map(long_poll, task_ids)
        wait_until(lambda: waiting() == polls, timeout=6, message=f"{polls} long-polls waiting at once")
        assert httpx.get(stack["status"] + "/healthz", timeout=5).status_code == 200
        assert list(answers) == ["scheduled"] * polls  # each answered at its timeout with the state
    r.close()
