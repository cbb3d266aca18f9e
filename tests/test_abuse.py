"""Abuse cases with their expected answers: slow clients, huge and odd bodies, injection
attempts, and secrets that must never reach a log line at any level."""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from local.embedded import free_port
from taskbus.settings import Settings
from tests.support import start_function, stop

GITHUB_SECRET = "gh-secret-8c1f9e2d7a"
API_KEY = "api-key-5d3b1a9f0e"


@pytest.fixture(scope="module")
def guarded(base_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    """An enqueue function at LOG_LEVEL=DEBUG with a webhook secret, an API key and a 1 s body deadline."""
    log_dir = tmp_path_factory.mktemp("guarded")
    settings = dataclasses.replace(base_settings, enqueue_port=free_port(), body_timeout_s=1.0, log_level="DEBUG")
    proc, url = start_function("enqueue", settings, log_dir, WEBHOOK_SOURCES="github",
                               WEBHOOK_GITHUB_SECRET=GITHUB_SECRET, API_KEYS=API_KEY)
    yield {"url": url, "port": settings.enqueue_port, "proc": proc}
    stop(proc)


def _raw(port: int, data: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(data)
    return sock


def test_slow_loris_connections_do_not_starve_normal_requests(functions: dict[str, str]) -> None:
    port = int(functions["enqueue"].rsplit(":", 1)[1])
    held = [_raw(port, b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                       b"Content-Length: 100\r\n\r\n{\"ty") for _ in range(25)]
    held += [_raw(port, b"POST /tasks HTTP/1.1\r\nHost: x\r\n") for _ in range(25)]  # headers never end
    try:
        with httpx.Client(timeout=5) as http:
            for _ in range(5):
                began = time.monotonic()
                reply = http.post(functions["enqueue"] + "/tasks", json={"type": "echo", "queue": "loris"})
                assert reply.status_code == 202
                assert time.monotonic() - began < 1.0
    finally:
        for sock in held:
            sock.close()


def test_body_that_never_finishes_gets_408(guarded: dict[str, object]) -> None:
    sock = _raw(int(guarded["port"]), b"POST /tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"  # type: ignore[call-overload]
                                      + f"Authorization: Bearer {API_KEY}\r\n".encode()
                                      + b"Content-Length: 100\r\n\r\n{\"ty")
    sock.settimeout(5)
    began = time.monotonic()
    reply = b""
    while b"}}" not in reply and (chunk := sock.recv(4096)):
        reply += chunk
    sock.close()
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    assert b'"request_timeout"' in reply
    assert time.monotonic() - began < 3


def test_two_hundred_thousand_keys_is_over_the_limit(http: httpx.Client, functions: dict[str, str]) -> None:
    payload = "{" + ",".join(f'"k{i}":0' for i in range(200_000)) + "}"
    body = '{"type":"echo","queue":"abuse","payload":' + payload + "}"
    reply = http.post(functions["enqueue"] + "/tasks", content=body, headers={"Content-Type": "application/json"})
    assert reply.status_code == 413 and reply.json()["error"]["code"] == "payload_too_large"


def test_many_keys_within_the_limit_are_accepted(http: httpx.Client, functions: dict[str, str]) -> None:
    payload = {f"k{i}": 0 for i in range(50_000)}
    reply = http.post(functions["enqueue"] + "/tasks", json={"type": "echo", "queue": "abuse", "payload": payload})
    assert reply.status_code == 202


def test_nul_escaped_is_data_raw_is_malformed(http: httpx.Client, functions: dict[str, str]) -> None:
    ok = http.post(functions["enqueue"] + "/tasks", content=b'{"type":"echo","queue":"abuse","payload":"a\\u0000b"}',
                   headers={"Content-Type": "application/json"})
    assert ok.status_code == 202
    task = http.get(functions["status"] + "/tasks/" + ok.json()["id"]).json()
    assert task["type"] == "echo"
    raw = http.post(functions["enqueue"] + "/tasks", content=b'{"type":"echo","payload":"a\x00b"}',
                    headers={"Content-Type": "application/json"})
    assert raw.status_code == 400


def test_header_injection_through_the_path_is_inert(functions: dict[str, str]) -> None:
    port = int(functions["status"].rsplit(":", 1)[1])
    sock = _raw(port, b"GET /tasks/abuse~%0d%0aSet-Cookie:%20x=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    sock.settimeout(5)
    reply = b""
    while chunk := sock.recv(65536):
        reply += chunk
    sock.close()
    head = reply.split(b"\r\n\r\n", 1)[0]
    assert head.startswith(b"HTTP/1.1 404")
    assert b"set-cookie" not in head.lower()


def test_no_secret_or_signature_ever_reaches_the_logs(guarded: dict[str, object]) -> None:
    url = str(guarded["url"])
    body = json.dumps({"ref": "refs/heads/main", "commits": []}).encode()
    good = "sha256=" + hmac.new(GITHUB_SECRET.encode(), body, hashlib.sha256).hexdigest()
    bad = "sha256=" + "ab" * 32
    with httpx.Client(timeout=5) as http:
        for signature in (good, bad):
            http.post(url + "/hooks/github", content=body, headers={
                "Content-Type": "application/json", "X-GitHub-Event": "push",
                "X-GitHub-Delivery": signature[-12:], "X-Hub-Signature-256": signature})
        for key in (API_KEY, "wrong-" + API_KEY):
            http.post(url + "/tasks", json={"type": "echo", "queue": "abuse"}, headers={"Authorization": f"Bearer {key}"})
    proc = guarded["proc"]
    log = Path(proc.log).read_text()  # type: ignore[attr-defined]
    assert '"level":"debug"' in log or '"level":"info"' in log or "Booting worker" in log  # logging is on
    for secret in (GITHUB_SECRET, API_KEY, good[7:], bad[7:]):
        assert secret not in log
