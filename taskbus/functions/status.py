"""The status function: `GET /tasks/<id>[?wait=s]` (and the blog's `GET /task/<id>`).

Serve it with `taskbus serve status`, or from a folder whose `main.py` is
`from taskbus.functions.status import status`: `functions-framework --source main.py --target status`.
"""

import flask
import functions_framework

from taskbus import logs, preflight
from taskbus.http.gunicorn import install
from taskbus.http.status_api import make_service

settings = preflight.settings_or_exit()  # read at start-up: a bad setting refuses in one line
logs.configure(settings.log_level)
if flask.has_app_context():  # functions-framework loads the function module inside its app context
    install(flask.current_app, settings.status_threads)
preflight.check(settings, "status")
service = make_service(settings)


@functions_framework.http
def status(request: flask.Request) -> flask.Response:
    return service(request)
