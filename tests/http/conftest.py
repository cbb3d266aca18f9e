"""The test_client tier: the real enqueue and status functions, built in this process by
functions-framework's `create_app(target, source)` and driven through a test client, against
the session's real Valkey. No gunicorn, no sockets between test and function.

Every test here runs on both serving paths (`serving`: `asgi`, the default targets `enqueue` /
`status`, through Starlette's TestClient; `wsgi`, the `*_wsgi` Flask targets, through Flask's
test client), with one client interface (`tests.http.clients`).

A function module reads `Settings.from_env()` when it loads, so `build_app` sets the
environment for exactly that moment and puts everything back afterwards: the env (including
the `FUNCTION_TARGET` / `FUNCTION_SIGNATURE_TYPE` that `create_app` writes and the `THREADS`
that `http.install` writes), `sys.modules["main"]` and `sys.path` (each source loads as
module `main`), the root logger (`logs.configure` replaces its handlers), and gunicorn's
`util.write_error` (`http.install` replaces it). An app keeps the settings it was built with,
so apps can live for a whole module or session, and several, of both functions, side by side.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import functions_framework
import gunicorn.util
import pytest

with warnings.catch_warnings():  # starlette 1.10 prefers httpx2; httpx (what we pin) still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from taskbus.logs import JsonFormatter
from taskbus.settings import Settings
from testkit.env import env_of
from tests.http.clients import PATHS, AsgiClient, target_of

ROOT = Path(__file__).resolve().parents[2]
STATUS_BASE = "http://status.test"  # the status_base_url of the apps built here
# read by create_app or Settings.from_env, never inherited
LOCAL_ENV = ("FUNCTION_", "WEBHOOK_", "API_KEYS", "ADMIN_KEYS")


@dataclasses.dataclass
class Built:
    app: Any  # a flask.Flask (the wsgi path) or a Starlette app (asgi)
    module: Any  # the function's module (`taskbus.functions.<function>`), holding `settings` and `service`


def build_app(function: str, settings: Settings, path: str = "asgi", **extra_env: str) -> Built:
    """`create_app` for functions/<function>/main.py with `Settings.from_env()` returning
    `settings` (plus `extra_env`: API_KEYS, WEBHOOK_*), leaving the process as it was. main.py is
    one import of `taskbus.functions.<function>`: that module is imported afresh for each build
    (it reads its settings when it loads), and the process's own copy, if any, put back after."""
    target = f"taskbus.functions.{function}"
    environ, main, cached = dict(os.environ), sys.modules.get("main"), sys.modules.pop(target, None)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    log_globals = logging.logThreads, logging.logMultiprocessing, logging._srcfile  # type: ignore[attr-defined]
    # logs.configure drops the root's handlers while the module loads: a LogLines collector
    # hears the start-up lines through the taskbus logger meanwhile
    collectors = [h for h in handlers if isinstance(h, LogLines)]
    taskbus_log = logging.getLogger("taskbus")
    for collector in collectors:
        taskbus_log.addHandler(collector)
    try:
        with pytest.MonkeyPatch.context() as mp:
            for name in list(os.environ):
                if name.startswith(LOCAL_ENV) or name == "THREADS":
                    del os.environ[name]
            os.environ.update(env_of(settings, **extra_env))
            mp.setattr(sys, "path", list(sys.path))
            mp.setattr(gunicorn.util, "write_error", gunicorn.util.write_error)
            app = functions_framework.create_app(target=target_of(function, path),
                                                 source=str(ROOT / "functions" / function / "main.py"))
            module = sys.modules[target]
    finally:
        sys.modules.pop(target, None)
        if cached is not None:
            sys.modules[target] = cached
        os.environ.clear()
        os.environ.update(environ)
        if main is None:
            sys.modules.pop("main", None)
        else:
            sys.modules["main"] = main
        for collector in collectors:
            taskbus_log.removeHandler(collector)
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.logThreads, logging.logMultiprocessing, logging._srcfile = log_globals  # type: ignore[attr-defined]
    plain = {"api_keys": (), "webhooks": ()}  # the ones extra_env sets
    assert dataclasses.replace(module.settings, **plain) == dataclasses.replace(settings, **plain), \
        "the function read other settings than it was given"
    return Built(app, module)


def close(built: Built) -> None:
    built.module.service.close()


@dataclasses.dataclass
class Api:
    """Test clients of one enqueue and one status function built from the same settings."""

    enqueue: Any  # FlaskClient, or AsgiClient with the same calls
    status: Any
    settings: Settings
    serving: str = "asgi"

    def path(self, status_url: str) -> str:
        """The status function's path of a `status_url` the enqueue function returned."""
        assert status_url.startswith(STATUS_BASE + "/"), status_url
        return status_url.removeprefix(STATUS_BASE)


@pytest.fixture(scope="session", params=PATHS)
def serving(request: pytest.FixtureRequest) -> str:
    """The serving path under test: every test of this tier runs on both."""
    return str(request.param)


def client_of(built: Built, path: str, entered: list[TestClient]) -> Any:
    if path == "wsgi":
        return built.app.test_client()
    client = TestClient(built.app, raise_server_exceptions=False)
    client.__enter__()  # one event loop for the client's life: the async Redis clients stay on it
    entered.append(client)
    return AsgiClient(client)


@pytest.fixture(scope="session")
def make_api(base_settings: Settings, serving: str) -> Iterator[Callable[..., Api]]:
    """`make_api(settings=None, status_env=None, **enqueue_env)`: both functions built from
    `settings` (default: the session's, with STATUS_BASE as status_base_url) on the serving
    path under test; `enqueue_env` is extra env for the enqueue function, `status_env` for the
    status function."""
    built: list[Built] = []
    entered: list[TestClient] = []

    def make(settings: Settings | None = None, status_env: dict[str, str] | None = None, **enqueue_env: str) -> Api:
        settings = settings or dataclasses.replace(base_settings, status_base_url=STATUS_BASE)
        pair = (build_app("enqueue", settings, serving, **enqueue_env),
                build_app("status", settings, serving, **(status_env or {})))
        built.extend(pair)
        return Api(client_of(pair[0], serving, entered), client_of(pair[1], serving, entered), settings, serving)

    yield make
    for client in entered:
        client.__exit__(None, None, None)
    for one in built:
        close(one)


@pytest.fixture(scope="session")
def api(make_api: Callable[..., Api]) -> Api:
    """Both functions on the session's settings (the conftest's gunicorn pair, in process)."""
    return make_api()


class LogLines(logging.Handler):
    """Every log record of the process while installed, formatted as the functions write them."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(JsonFormatter())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def log_lines() -> Iterator[LogLines]:
    """Collect every log line of this module's tests, the functions' start-up included (use
    it before building the apps): the root logger at DEBUG for the module, then restored."""
    root = logging.getLogger()
    level = root.level
    handler = LogLines()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)
