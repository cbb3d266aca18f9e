"""The enqueue function: `POST /tasks` (and the blog's `POST /enqueue/`) answers 202 at once.

Serve it with `taskbus serve enqueue`, or from a folder whose `main.py` is
`from taskbus.functions.enqueue import enqueue`: `functions-framework --source main.py --target enqueue`.
"""

import flask
import functions_framework

from taskbus import logs, preflight
from taskbus.http.enqueue_api import make_service
from taskbus.http.gunicorn import install

settings = preflight.settings_or_exit()  # read at start-up: a bad setting refuses in one line
logs.configure(settings.log_level)
if flask.has_app_context():  # functions-framework loads the function module inside its app context
    install(flask.current_app, settings.enqueue_threads)
preflight.check(settings, "enqueue")
service = make_service(settings)


@functions_framework.http
def enqueue(request: flask.Request) -> flask.Response:
    return service(request)
