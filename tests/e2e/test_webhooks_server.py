"""Webhooks where a real server process matters: 20 identical deliveries at once, a source
without a secret refusing to start, and the gunicorn processes' output free of secrets.
Everything else about webhooks and API keys runs in process (tests/http/test_webhooks.py).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from local.embedded import free_port
from taskbus.settings import Settings
from testkit.functions import start_function
from testkit.procs import Proc, spawn, stop, wait_until
from tests.http.hooks import (
    ALL_SECRETS,
    ORPHAN_GH_SECRET,
    QUEUES,
    SOURCES,
    delivery,
    hook_settings,
    signature_header,
    stream_len,
    webhook_env,
)
from tests.rawhttp import at_once


def fresh_settings(base_settings: Settings, **changes: object) -> Settings:
    status_port = free_port()
    return dataclasses.replace(base_settings, enqueue_port=free_port(), status_port=status_port,  # type: ignore[arg-type]
                               status_base_url=f"http://127.0.0.1:{status_port}", **changes)


@pytest.fixture(scope="module")
def hooks(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Proc]]:
    """The enqueue function with the six webhook sources under gunicorn: its URL and process."""
    log_dir = tmp_path_factory.mktemp("webhook-functions")
    proc, url = start_function("enqueue", hook_settings(fresh_settings(base_settings)), log_dir,
                               env=webhook_env(log_dir))
    yield url, proc
    stop(proc)


def test_20_concurrent_identical_deliveries_make_one_task(hooks: tuple[str, Proc], r: redis.Redis) -> None:
    url, _ = hooks
    d = delivery("github")
    queue = QUEUES["github"]
    before = stream_len(r, queue)
    with httpx.Client(timeout=15, limits=httpx.Limits(max_connections=20)) as client:
        results = at_once(20, lambda: client.post(f"{url}/hooks/github", content=d.body,
                                                  headers={"Content-Type": "application/json", **d.headers}))
    errors = [x for x in results if isinstance(x, BaseException)]
    assert not errors, errors
    responses = [x for x in results if isinstance(x, httpx.Response)]
    assert sorted(x.status_code for x in responses) == [200] * 19 + [202], [x.text for x in responses]
    assert len({x.json()["id"] for x in responses}) == 1
    assert stream_len(r, queue) == before + 1


def test_source_without_a_secret_refuses_to_start(base_settings: Settings, tmp_path: Path) -> None:
    proc = spawn("enqueue", fresh_settings(base_settings), tmp_path, WEBHOOK_SOURCES="github,orphan",
                 WEBHOOK_GITHUB_SECRET=ORPHAN_GH_SECRET, WEBHOOK_ORPHAN_SCHEME="hmac")
    try:
        wait_until(lambda: proc.popen.poll() is not None, timeout=20, message="enqueue to exit")
    finally:
        proc.kill()
    output = proc.output()
    assert proc.popen.returncode != 0, output
    assert "webhook source 'orphan' has no secret" in output
    assert "WEBHOOK_ORPHAN_SECRET" in output
    assert ORPHAN_GH_SECRET not in output


def test_secrets_never_reach_the_server_log(hooks: tuple[str, Proc]) -> None:
    """After a valid, a redelivered and an unsigned delivery to every source."""
    url, proc = hooks
    with httpx.Client(timeout=10) as client:
        for source in SOURCES:
            d = delivery(source)
            headers = {"Content-Type": d.content_type, **d.headers}
            for _ in range(2):
                assert client.post(f"{url}/hooks/{source}", content=d.body, headers=headers).status_code in (200, 202)
            del headers[signature_header(d)]
            assert client.post(f"{url}/hooks/{source}", content=d.body, headers=headers).status_code == 401
    log = proc.output()
    assert "webhook sources enabled" in log, log[-2000:]
    for name in SOURCES:
        assert name in log
    for secret in ALL_SECRETS:
        assert secret not in log, "a secret appears in the enqueue log"
