"""The ASGI path's ceiling: the same bare function for functions-framework's ASGI mode
(`functions_framework.aio.http`, a Starlette request, redis-py's asyncio client), one Redis
`SET`, no taskbus code. Served the way `functions-framework --asgi` does: gunicorn with
`-k uvicorn_worker.UvicornWorker`, 2 processes, on
`functions_framework.aio:create_asgi_app(target="set_one", source=<this file>)` (`bench/enqueue.py`)."""

import functions_framework.aio
import redis.asyncio as aioredis
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from bench.peers import redis_url

_redis = aioredis.Redis.from_url(redis_url())


@functions_framework.aio.http
async def set_one(request: Request) -> PlainTextResponse:
    await _redis.set("bench:ff", request.method)
    return PlainTextResponse("ok")
