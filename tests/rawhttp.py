"""HTTP helpers both test tiers share: a raw-socket request (bytes exactly as given) and the
JSON error shape, checked the same way on an httpx, raw-socket or Flask test-client response."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

T = TypeVar("T")


@dataclasses.dataclass
class RawResponse:
    """A response read off a raw socket; header names are lower-cased."""

    status_code: int
    headers: dict[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


def raw_request(base_url: str, method: str, target: str, headers: dict[str, str] | None = None,
                body: bytes = b"", timeout: float = 5.0, send_body: bool = True) -> RawResponse:
    """Send bytes exactly as given (no URL normalisation, no header validation) and read one response.

    Headers are encoded as latin-1. Content-Length is added for a body unless given.
    With `send_body=False` only the head is sent: the response must come without the body.
    """
    parts = urlsplit(base_url)
    all_headers = {"Host": parts.netloc, "Connection": "close"}
    if body and not any(name.lower() == "content-length" for name in (headers or {})):
        all_headers["Content-Length"] = str(len(body))
    all_headers.update(headers or {})
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in all_headers.items()) + "\r\n"
    with socket.create_connection((parts.hostname, parts.port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(head.encode("latin-1") + (body if send_body else b""))
        data = b""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in data:
            data += _recv(sock, deadline)
        head_bytes, rest = data.split(b"\r\n\r\n", 1)
        lines = head_bytes.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        response_headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            response_headers[name.strip().lower()] = value.strip()
        length = int(response_headers.get("content-length", "-1"))
        while length < 0 or len(rest) < length:
            chunk = _recv(sock, deadline, eof_ok=length < 0)
            if not chunk:
                break
            rest += chunk
    return RawResponse(status, response_headers, rest[:length] if length >= 0 else rest)


def _recv(sock: socket.socket, deadline: float, eof_ok: bool = False) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("no complete response in time")
    sock.settimeout(remaining)
    chunk = sock.recv(65536)
    if not chunk and not eof_ok:
        raise ConnectionError("connection closed before a complete response")
    return chunk


def json_of(response: Any) -> Any:
    """The JSON body of an httpx or raw response (`.json()`) or a Flask test response (`.json`)."""
    body = response.json
    return body() if callable(body) else body


def assert_error(response: Any, status: int, code: str | None = None) -> dict[str, str]:
    """The response is `status` with the JSON error shape; returns the error object."""
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers.get("content-type", "").startswith("application/json"), response.headers
    body = json_of(response)
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"code", "message"}, body
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and error["message"]
    if code is not None:
        assert error["code"] == code, body
    return dict(error)


def at_once(count: int, call: Callable[[], T], timeout: float = 20.0) -> list[T | BaseException]:
    """Run `call` in `count` threads released together by a barrier; returns what each
    returned or raised, once all have finished (fails if one is still running at `timeout`)."""
    barrier = threading.Barrier(count)
    results: list[T | BaseException] = []
    lock = threading.Lock()

    def run() -> None:
        try:
            barrier.wait(timeout=10)
            result: T | BaseException = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result = exc
        with lock:
            results.append(result)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout)
    assert len(results) == count, f"{count - len(results)} of {count} calls still running after {timeout} s"
    return results
