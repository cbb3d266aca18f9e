"""The body rules both serving paths apply: size (refused from Content-Length before reading),
media type, charset, a deadline for slow senders, and how much of an unread body is discarded
so the client still sees our answer. Reading itself is the adapters' (a socket, an ASGI receive)."""

from __future__ import annotations

from typing import Any

from taskbus import codec
from taskbus.errors import PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from taskbus.http.core import Request
from taskbus.settings import Settings

READ_CHUNK_BYTES = 65536
# An unread body (a 413 from Content-Length, a 401, a 404) up to this many times the limit is
# read and thrown away before the answer goes out: a client that sends its whole body before it
# reads the response then sees our answer, not a reset connection. A larger one is not worth
# receiving; the server closes the connection after answering.
DISCARD_FACTOR = 2


def admit_body(request: Request, settings: Settings, media_types: tuple[str, ...]) -> None:
    """Refuse an oversized body from its Content-Length before it is read; `media_types`, if
    not empty, are the Content-Types accepted (others get 415); only utf-8 is accepted."""
    length = request.content_length
    if length is not None and length > settings.max_body_bytes:
        raise too_large(settings)
    if media_types and request.mimetype not in media_types:
        raise UnsupportedMediaType(f"Content-Type must be {' or '.join(media_types)}")
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("only the utf-8 charset is accepted")


def too_large(settings: Settings) -> PayloadTooLarge:
    return PayloadTooLarge(f"body is over the {settings.max_body_bytes} byte limit")


def timed_out(settings: Settings) -> RequestTimeout:
    return RequestTimeout(f"the body did not arrive within {settings.body_timeout_s:g} s")


def discard_bound(settings: Settings) -> int:
    """How many unread bytes are received and dropped before answering (see DISCARD_FACTOR)."""
    return DISCARD_FACTOR * settings.max_body_bytes


def json_body(request: Request) -> Any:
    """The request body as strict JSON."""
    return codec.loads_strict(request.body)
