"""The console function: the admin API under `/api/...` and the dashboard at `/`.

Two targets over the one service: `console` is the ASGI function (the default), `console_wsgi`
the Flask one. Serve it with `taskbus serve console`, or from a folder whose `main.py` is
`from taskbus.functions.console import console, console_wsgi`:
`functions-framework --source main.py --target console` (or `--target console_wsgi`).
It refuses to start without ADMIN_KEYS unless CONSOLE_READ_ONLY=true (see taskbus.preflight).
"""

import flask
import functions_framework
import functions_framework.aio
import starlette.requests
import starlette.responses

from taskbus.functions.boot import boot
from taskbus.http import asgi, flask_adapter
from taskbus.http.console_api import make_service

settings, service = boot("console", make_service)


def _static_wsgi(filename: str) -> flask.Response:
    """Flask's own `/static/<path:filename>` route (every Flask app has one) would shadow the
    service's: its endpoint is pointed at the service, so both paths serve the same files."""
    return flask_adapter.handle(service, flask.request)


if flask.has_app_context():  # functions-framework loads this module inside its Flask app's context
    flask.current_app.view_functions["static"] = _static_wsgi


@functions_framework.aio.http
async def console(request: starlette.requests.Request) -> starlette.responses.Response:
    """The ASGI target: the operator core's Redis calls run on a thread."""
    return await asgi.handle(service, request)


@functions_framework.http
def console_wsgi(request: flask.Request) -> flask.Response:
    """The Flask (WSGI) target, for deployments that must stay on WSGI."""
    return flask_adapter.handle(service, request)
