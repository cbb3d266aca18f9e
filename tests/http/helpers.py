"""Request bodies and Redis oracles shared by the HTTP tests of both tiers."""

from __future__ import annotations

import re
from typing import Any

import redis

from taskbus.keys import Keys

MiB = 1024 * 1024
KEYS = Keys("tb")  # the session settings' key prefix
ISO_Z = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
VIEW_KEYS = {"id", "type", "queue", "status", "attempts", "max_attempts", "created_at", "started_at",
             "finished_at", "result", "error"}
JSON = {"Content-Type": "application/json"}


def queue_keys(r: redis.Redis, queue: str) -> set[str]:
    return set(r.keys(f"{KEYS.prefix}:{{{queue}}}:*"))


def create(client: Any, queue: str, headers: dict[str, str] | None = None, **fields: Any) -> Any:
    return client.post("/tasks", json={"type": "t", "queue": queue, **fields}, headers=headers)


def create_id(client: Any, queue: str, **fields: Any) -> str:
    response = create(client, queue, **fields)
    assert response.status_code == 202, response.text
    return str(response.json["id"])


def post_raw(client: Any, path: str, body: bytes, headers: dict[str, str] | None = JSON) -> Any:
    return client.post(path, data=body, headers=headers)


def padded_object(size: int) -> bytes:
    """A JSON object of exactly `size` bytes (a body for the blog's /enqueue route)."""
    head, tail = b'{"pad": "', b'"}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


def padded_body(queue: str, size: int) -> bytes:
    """A valid task body of exactly `size` bytes."""
    head = b'{"type": "t", "queue": "' + queue.encode() + b'", "payload": "'
    tail = b'"}'
    return head + b"a" * (size - len(head) - len(tail)) + tail
