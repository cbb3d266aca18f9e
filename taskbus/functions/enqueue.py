"""The enqueue function: `POST /tasks` (and the blog's `POST /enqueue/`) answers 202 at once.

Two targets over the one service: `enqueue` is the ASGI function (functions-framework's
`aio.http`: Starlette under uvicorn workers; the default), `enqueue_wsgi` the Flask one (gthread).
Serve it with `taskbus serve enqueue`, or from a folder whose `main.py` is
`from taskbus.functions.enqueue import enqueue, enqueue_wsgi`:
`functions-framework --source main.py --target enqueue` (or `--target enqueue_wsgi`).
"""

import flask
import functions_framework
import functions_framework.aio
import starlette.requests
import starlette.responses

from taskbus.functions.boot import boot
from taskbus.http import asgi, flask_adapter
from taskbus.http.enqueue_api import make_service

settings, service = boot("enqueue", make_service)


@functions_framework.aio.http
async def enqueue(request: starlette.requests.Request) -> starlette.responses.Response:
    """The ASGI target: the body is awaited; the Redis script (or Kafka produce) runs on a thread."""
    return await asgi.handle(service, request)


@functions_framework.http
def enqueue_wsgi(request: flask.Request) -> flask.Response:
    """The Flask (WSGI) target, for deployments that must stay on WSGI."""
    return flask_adapter.handle(service, request)
