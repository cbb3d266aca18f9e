"""The framework-neutral request and response every rule is written against.

The Flask and Starlette adapters (`flask_adapter`, `asgi`) translate to and from these, so
routing, keys, limits, validation and the error table exist once, whichever server runs."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from taskbus import codec

JSON_TYPE = "application/json"


@dataclasses.dataclass(frozen=True)
class Request:
    """What the rules look at. `headers` is the framework's case-insensitive mapping; `body`
    is filled in by the adapter once the limits allowed reading it (empty until then); `actor`
    by the service: the label of the key that authenticated it (what audit trails name); `remote`
by the adapter."""

    method: str
    path: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    body: bytes = b""
    actor: str = ""
    remote: str = ""  # the client's address ("" when unknown): /metrics is open to loopback only

    @property
    def content_length(self) -> int | None:
        """The declared length, or None when absent (chunked) or not a number."""
        raw = self.headers.get("Content-Length")
        try:
            return int(raw) if raw is not None else None
        except ValueError:
            return None

    @property
    def mimetype(self) -> str:
        return _content_type(self.headers.get("Content-Type", ""))[0]

    @property
    def mimetype_params(self) -> dict[str, str]:
        return _content_type(self.headers.get("Content-Type", ""))[1]


def _content_type(value: str) -> tuple[str, dict[str, str]]:
    """`text/plain; charset="x"` → ("text/plain", {"charset": "x"}): lower-cased type and keys."""
    kind, *parts = value.split(";")
    params: dict[str, str] = {}
    for part in parts:
        key, sep, val = part.partition("=")
        if sep:
            params[key.strip().lower()] = val.strip().strip('"')
    return kind.strip().lower(), params


@dataclasses.dataclass(frozen=True)
class Response:
    """A JSON response: status, extra headers, and the encoded body."""

    status: int
    body: bytes
    headers: Mapping[str, str] = dataclasses.field(default_factory=dict)
    media_type: str = JSON_TYPE


def json_response(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(status, codec.dumps(body), dict(headers or {}))


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None,
    details: Mapping[str, object] | None = None,
) -> Response:
    """The one error shape: `{"error": {"code", "message"}}` (a 409 adds the task's `status`)."""
    return json_response({"error": {"code": code, "message": message, **(details or {})}}, status, headers)
