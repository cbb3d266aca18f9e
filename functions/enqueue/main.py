"""The enqueue function: `POST /tasks` (and the blog's `POST /enqueue/`) answers 202 at once.

Deploy alone: `functions-framework --source functions/enqueue/main.py --target enqueue`.
"""

import flask
import functions_framework

from taskbus import logs
from taskbus.http.enqueue_api import make_service
from taskbus.http.gunicorn import install
from taskbus.settings import Settings

settings = Settings.from_env()  # read at start-up: bad settings refuse to start
logs.configure(settings.log_level)
install(flask.current_app, settings.enqueue_threads)  # functions-framework loads this module in its app context
service = make_service(settings)


@functions_framework.http
def enqueue(request: flask.Request) -> flask.Response:
    return service(request)
