"""The dashboard's stack for real-browser tests: the session's Valkey, a real console function
(`taskbus serve console`) and a real worker process, driven through Debian's Chromium by
Playwright (never Playwright's own browser download: `make tools` installs the Debian package).

One stack per test module (starting it costs seconds); each test uses queues of its own.
"""

from __future__ import annotations

import dataclasses
import os
import re
import secrets
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from local.embedded import free_port
from taskbus.admin import Admin
from taskbus.admin.redrive import Redrives
from taskbus.enqueue import Enqueuer
from taskbus.settings import Settings
from taskbus.task import TaskSpec
from testkit.env import ROOT, env_of
from testkit.procs import Proc, spawn, wait_healthy, wait_until

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOTS = ROOT / "docs" / "screenshots"
VIEWPORT = {"width": 1280, "height": 800}
ACTION_URL = re.compile(r"/api/.*(:|%3A)(cancel|retry|pause|resume|purge)$", re.IGNORECASE)  # custom methods


def pytest_configure(config: pytest.Config) -> None:
    expect.set_options(timeout=10_000)  # `make test` loads 2 cores with 4 runners: room for a 2 s refresh or two


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, headless; a missing browser fails every test that needs it, loudly."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run `make tools` (as root) to install Debian's chromium "
                    "for the dashboard's browser tests", pytrace=False)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@dataclasses.dataclass
class Stack:
    """A running console and worker, and the core's own view of the same Redis (the oracle)."""

    url: str
    key: str
    settings: Settings
    admin: Admin
    redrives: Redrives
    enqueuer: Enqueuer
    console: Proc
    worker: Proc
    served: tuple[str, ...]  # the queues the worker serves
    idle: tuple[str, ...]  # queues no worker serves: their tasks stay queued

    def enqueue(self, queue: str, type_: str, payload: Any = None, **spec: Any) -> str:
        task_id, _, _ = self.enqueuer.enqueue(TaskSpec(type=type_, payload=payload or {}, queue=queue, **spec))
        return task_id

    def wait_status(self, task_id: str, *statuses: str, timeout: float = 15.0) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            task = self.admin.task(task_id)
            return task if task is not None and task["status"] in statuses else None

        return dict(wait_until(reached, timeout=timeout, message=f"task {task_id} {'/'.join(statuses)}",
                               proc=self.worker))


def console_env(settings: Settings, **extra: str) -> dict[str, str]:
    """A console's environment: no ADMIN_KEYS or ADMIN_KEYS_FILE of the developer's (testkit's
    clean_env keeps them), only the `extra` given."""
    return {**{k: v for k, v in env_of(settings).items() if not k.startswith("ADMIN_KEYS")}, **extra}


@pytest.fixture(scope="module")
def stack(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Queues `served[i]` run on a worker with tests/handlers.py; `idle[i]` have no worker."""
    log_dir = tmp_path_factory.mktemp("dashboard")
    served = tuple(f"dash-{uuid.uuid4().hex[:10]}" for _ in range(4))
    idle = tuple(f"dash-idle-{uuid.uuid4().hex[:10]}" for _ in range(3))
    # a key prefix of its own: the overview lists this stack's queues, not every test's
    # (and one gunicorn worker per console: half the start-up on a 2-core machine)
    settings = dataclasses.replace(base_settings, key_prefix=f"tbdash{uuid.uuid4().hex[:8]}", queues=served + idle,
                                   console_port=free_port(), web_workers=1)
    key = secrets.token_urlsafe(24)
    admin, redrives, enqueuer = Admin(settings), Redrives(settings), Enqueuer(settings)
    console = spawn("console", settings, log_dir, env=console_env(settings, ADMIN_KEYS=f"ops:{key}"))
    worker = spawn("worker", dataclasses.replace(settings, queues=served), log_dir)
    url = f"http://127.0.0.1:{settings.console_port}"
    try:
        wait_healthy(console, url)
        wait_until(lambda: any(w["queues"] for w in admin.workers()), timeout=20, message="the worker's heartbeat",
                   proc=worker)
        yield Stack(url, key, settings, admin, redrives, enqueuer, console, worker, served, idle)
    finally:
        for proc in (worker, console):
            proc.kill()  # nothing of theirs outlives the module (a prefix of its own): no drain to wait for
        for closeable in (enqueuer, redrives, admin):
            closeable.close()


@pytest.fixture(scope="module")
def open_console(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second console on the same Redis, CONSOLE_READ_ONLY=true without ADMIN_KEYS: its URL."""
    settings = dataclasses.replace(stack.settings, console_read_only=True, console_port=free_port())
    console = spawn("console", settings, tmp_path_factory.mktemp("open-console"), env=console_env(settings))
    url = f"http://127.0.0.1:{settings.console_port}"
    try:
        wait_healthy(console, url)
        yield url
    finally:
        console.kill()


@pytest.fixture
def page(browser: Browser, stack: Stack, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh tab (its own sessionStorage) on the dashboard; the test fails on any script error
    or Content-Security-Policy violation the page reports."""
    context = browser.new_context(viewport=VIEWPORT)  # type: ignore[arg-type]
    tab = context.new_page()
    tab.set_default_timeout(15_000)
    problems: list[str] = []
    tab.on("request", lambda req: problems.append(f"an action sent as GET: {req.url}")
           if req.method == "GET" and ACTION_URL.search(req.url) else None)
    tab.on("pageerror", lambda error: problems.append(f"script error: {error}"))
    tab.on("console", lambda message: problems.append(message.text) if _is_problem(message) else None)
    tab.goto(stack.url + "/")
    yield tab
    context.close()
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        print(f"--- console log ---\n{stack.console.tail(40)}\n--- worker log ---\n{stack.worker.tail(40)}")
    assert not problems, f"the page reported: {problems}"


def _is_problem(message: ConsoleMessage) -> bool:
    """A script error or a CSP refusal; an HTTP error status the page handles is not one."""
    return message.type == "error" and "Failed to load resource" not in message.text


def sign_in(page: Page, key: str) -> None:
    page.fill("#login input[name=key]", key)
    page.click("#login button")
    page.wait_for_selector("#nav:not([hidden])")


def screenshot(page: Page, name: str) -> None:
    """docs/screenshots/<name>.png, rewritten only with UPDATE_SCREENSHOTS=1 (CI keeps the tree clean)."""
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
