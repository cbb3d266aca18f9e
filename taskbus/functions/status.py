"""The status function: `GET /tasks/<id>[?wait=s]` (and the blog's `GET /task/<id>`).

Two targets over the one service: `status` is the ASGI function (the default: a long-poll
awaits redis-py's asyncio client and holds no thread), `status_wsgi` the Flask one (each
long-poll holds a gunicorn thread). Serve it with `taskbus serve status`, or from a folder
whose `main.py` is `from taskbus.functions.status import status, status_wsgi`:
`functions-framework --source main.py --target status` (or `--target status_wsgi`).
"""

import flask
import functions_framework
import functions_framework.aio
import starlette.requests
import starlette.responses

from taskbus.functions.boot import boot
from taskbus.http import asgi, flask_adapter, gunicorn, uvicorn
from taskbus.http.status_api import StatusAPI, make_service

settings, service = boot("status", make_service)
api = service.api
assert isinstance(api, StatusAPI)
uvicorn.DRAIN_HOOKS.append(api.async_reader.drain)  # SIGTERM: long-polls answer now, on either path
gunicorn.on_term(api.reader.drain)


@functions_framework.aio.http
async def status(request: starlette.requests.Request) -> starlette.responses.Response:
    """The ASGI target: reads and long-polls on the event loop."""
    return await asgi.handle(service, request)


@functions_framework.http
def status_wsgi(request: flask.Request) -> flask.Response:
    """The Flask (WSGI) target, for deployments that must stay on WSGI."""
    return flask_adapter.handle(service, request)
