"""The WSGI serving path: a `flask.Request` becomes a neutral `core.Request`, the service's
`core.Response` a `flask.Response`. Reading honours the body rules on gunicorn's socket."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import cast

import flask
import werkzeug.exceptions

from taskbus.http import Service
from taskbus.http.body import READ_CHUNK_BYTES, discard_bound, timed_out, too_large
from taskbus.http.core import Request, Response
from taskbus.settings import Settings


def handle(service: Service, request: flask.Request) -> flask.Response:
    """Serve one request on the calling thread."""
    settings = service.settings
    headers = cast(Mapping[str, str], request.headers)  # werkzeug's: case-insensitive, str to str
    neutral = Request(request.method, request.path, request.args, headers, remote=request.remote_addr or "")
    try:
        response = service.handle(neutral, lambda _: read_limited(request, settings))
    finally:
        skip_unread_body(request, settings)
    return to_flask(response)


def to_flask(response: Response) -> flask.Response:
    return flask.Response(response.body, status=response.status, headers=dict(response.headers),
                          mimetype=response.media_type)


def read_limited(request: flask.Request, settings: Settings) -> bytes:
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
            raise timed_out(settings) from None
        raise
    finally:
        if sock is not None:
            sock.settimeout(None)
    if size > limit:
        raise too_large(settings)
    data = b"".join(chunks)
    request._cached_data = data  # what get_data() returns from now on (see skip_unread_body)
    return data


def skip_unread_body(request: flask.Request, settings: Settings) -> None:
    """Deal with a body we answered without reading (413 from Content-Length, 401, 404, 415).

    functions-framework's after_request hook would read it all with get_data(): a 50 MB
    body, or one that never arrives, would hold the thread. A body up to `discard_bound` is
    drained (within BODY_TIMEOUT_S) so the client sees the answer and the keep-alive connection
    stays usable; a larger one is left for gunicorn, which closes the connection after the
    response."""
    if getattr(request, "_cached_data", None) is not None:
        return
    request._cached_data = b""
    length = request.content_length or 0
    if not 0 < length <= discard_bound(settings):
        return
    sock = request.environ.get("gunicorn.socket")
    deadline = time.monotonic() + settings.body_timeout_s
    try:
        while True:
            if sock is not None:
                sock.settimeout(max(0.001, deadline - time.monotonic()))
            if not request.stream.read(READ_CHUNK_BYTES):
                break
    except (TimeoutError, OSError, werkzeug.exceptions.ClientDisconnected):
        pass  # the client stopped sending: gunicorn closes the connection after the answer
    finally:
        if sock is not None:
            sock.settimeout(None)
