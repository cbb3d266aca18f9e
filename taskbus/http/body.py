"""Reading request bodies within limits: size (refused from Content-Length before reading),
media type, charset, and a deadline for slow senders."""

from __future__ import annotations

import time
from typing import Any

import flask
import werkzeug.exceptions

from taskbus import codec
from taskbus.errors import PayloadTooLarge, RequestTimeout, UnsupportedMediaType
from taskbus.settings import Settings

READ_CHUNK_BYTES = 65536


def read_body(request: flask.Request, settings: Settings, media_types: tuple[str, ...] | None = None) -> bytes:
    """The raw body. An oversized one is refused from its Content-Length before it is read;
    `media_types`, if given, are the Content-Types accepted (others get 415)."""
    limit = settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"body is over the {limit} byte limit")
    if media_types is not None and request.mimetype not in media_types:
        raise UnsupportedMediaType(f"Content-Type must be {' or '.join(media_types)}")
    charset = request.mimetype_params.get("charset", "utf-8").lower()
    if charset not in ("utf-8", "utf8"):
        raise UnsupportedMediaType("only the utf-8 charset is accepted")
    data = _read_limited(request, settings)
    request._cached_data = data  # what get_data() returns from now on (see skip_unread_body)
    return data


def _read_limited(request: flask.Request, settings: Settings) -> bytes:
    """Read at most limit + 1 bytes: a chunked body has no Content-Length to refuse up front.
    A deadline on the socket frees the thread from a client that sends its body slowly."""
    limit = settings.max_body_bytes
    sock = request.environ.get("gunicorn.socket")
    deadline = time.monotonic() + settings.body_timeout_s
    chunks: list[bytes] = []
    size = 0
    try:
        while size <= limit:
            if sock is not None:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
            chunk = request.stream.read(min(READ_CHUNK_BYTES, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except (TimeoutError, werkzeug.exceptions.ClientDisconnected):  # werkzeug wraps socket errors
        request._cached_data = b""  # nothing more to read or drain from this connection
        if time.monotonic() >= deadline:
            raise RequestTimeout(f"the body did not arrive within {settings.body_timeout_s:g} s") from None
        raise
    finally:
        if sock is not None:
            sock.settimeout(None)
    if size > limit:
        raise PayloadTooLarge(f"body is over the {limit} byte limit")
    return b"".join(chunks)


def read_json(request: flask.Request, settings: Settings) -> Any:
    """The request body as strict JSON."""
    return codec.loads_strict(read_body(request, settings, ("application/json",)))


def skip_unread_body(request: flask.Request, settings: Settings) -> None:
    """Deal with a body we answered without reading (413 from Content-Length, 401, 404, 415).

    functions-framework's after_request hook would read it all with get_data(): a 50 MB
    body, or one that never arrives, would hold the thread. A small body is drained so the
    keep-alive connection stays usable; a large one is left for gunicorn, which closes the
    connection after the response."""
    if getattr(request, "_cached_data", None) is not None:
        return
    length = request.content_length or 0
    if 0 < length <= 2 * settings.max_body_bytes:
        while request.stream.read(READ_CHUNK_BYTES):
            pass
    request._cached_data = b""
