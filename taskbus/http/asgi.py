"""The ASGI serving path: a Starlette request becomes a neutral `core.Request`, the service's
`core.Response` a Starlette response. The body is received from the ASGI `receive` channel
under the same rules as on the WSGI path, without holding a thread."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import starlette.requests
import starlette.responses

from taskbus.errors import BadRequest
from taskbus.http import Service
from taskbus.http.body import discard_bound, timed_out, too_large
from taskbus.http.core import Request, Response, error_response
from taskbus.settings import Settings

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class Body:
    """The request body as it arrives, within the limit and the deadline."""

    def __init__(self, receive: Receive, settings: Settings) -> None:
        self.receive = receive
        self.settings = settings
        self.complete = False  # the last body message arrived (or the client left)
        self.received = 0

    async def read(self, request: Request) -> bytes:
        """At most MAX_BODY_BYTES (a chunked body over it is a 413), by BODY_TIMEOUT_S (else 408)."""
        limit = self.settings.max_body_bytes
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                while not self.complete and self.received <= limit:
                    chunks.append(await self._next())
        except TimeoutError:
            raise timed_out(self.settings) from None
        if self.received > limit:
            raise too_large(self.settings)
        return b"".join(chunks)

    async def discard(self, request: Request) -> None:
        """Receive and drop what the client is still sending, up to `discard_bound` bytes and
        BODY_TIMEOUT_S, so that a client that sends its whole body before reading the answer
        gets the answer. Past the bound the server closes the connection after answering."""
        if self.complete:
            return
        length = request.content_length
        if not length and "transfer-encoding" not in request.headers:
            return  # no body to discard (a GET): spare the hot path a receive
        bound = discard_bound(self.settings)
        if length is not None and length > bound:
            return
        try:
            async with asyncio.timeout(self.settings.body_timeout_s):
                while not self.complete and self.received <= bound:
                    await self._next()
        except (TimeoutError, BadRequest):
            pass

    async def _next(self) -> bytes:
        message = await self.receive()
        if message["type"] == "http.disconnect":
            self.complete = True
            raise BadRequest("the client disconnected before its body arrived")
        chunk: bytes = message.get("body", b"")
        self.received += len(chunk)
        self.complete = not message.get("more_body", False)
        return chunk


# gunicorn's limits on the WSGI path (its defaults), applied here since httptools has none.
MAX_REQUEST_TARGET = 4094
MAX_HEADER_LINE = 8190
MAX_HEADERS = 100


async def handle(service: Service, request: starlette.requests.Request) -> starlette.responses.Response:
    """Serve one request on the event loop (sync endpoints go to a worker thread)."""
    query = request.query_params
    items = query.multi_items()
    if len(items) > len(query):  # a repeated parameter: the first value counts, as on the WSGI path
        query = dict(reversed(items))  # type: ignore[assignment]
    client = request.scope.get("client")
    neutral = Request(request.method, request.scope["path"], query, request.headers,
                      remote=client[0] if client else "")
    body = Body(request.receive, service.settings)
    response = over_limits(request.scope)
    if response is None:
        served = service.handle_async(neutral, body.read)
        long_poll = neutral.method == "GET" and query.get("wait") and not neutral.content_length
        response = await (_unless_disconnected(served, request.receive) if long_poll else served)
    await body.discard(neutral)
    return to_starlette(response)


async def _unless_disconnected(served: Awaitable[Response], receive: Receive) -> Response:
    """A long-poll whose client goes away stops waiting at once (its Redis connection goes back
    to the pool) instead of at its timeout. Only for bodiless requests: the watcher takes the
    ASGI receive channel, which a body reader would need."""
    work = asyncio.ensure_future(served)
    watch = asyncio.ensure_future(_disconnect(receive))
    try:
        await asyncio.wait((work, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if work.done():
        return work.result()
    work.cancel()
    await asyncio.gather(work, return_exceptions=True)
    return error_response(400, "bad_request", "the client disconnected")  # nobody reads it


async def _disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


def over_limits(scope: MutableMapping[str, Any]) -> Response | None:
    """The 414 and 431 gunicorn gives on the WSGI path, as the same JSON errors."""
    target = len(scope.get("raw_path") or b"") + len(scope.get("query_string") or b"") + 1
    if target > MAX_REQUEST_TARGET:
        return error_response(414, "uri_too_long", f"the request target is over {MAX_REQUEST_TARGET} bytes")
    headers = scope["headers"]
    if len(headers) > MAX_HEADERS or any(len(k) + len(v) + 2 > MAX_HEADER_LINE for k, v in headers):
        message = f"over {MAX_HEADERS} headers, or a header over {MAX_HEADER_LINE} bytes"
        return error_response(431, "headers_too_large", message)
    return None


def to_starlette(response: Response) -> starlette.responses.Response:
    return starlette.responses.Response(response.body, status_code=response.status,
                                        headers=dict(response.headers), media_type=response.media_type)
