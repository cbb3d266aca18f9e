"""The status function: `GET /tasks/<id>[?wait=s]` (and the blog's `GET /task/<id>`).

Deploy alone: `functions-framework --source functions/status/main.py --target status`.
"""

import flask
import functions_framework

from taskbus import logs
from taskbus.http.gunicorn import install
from taskbus.http.status_api import make_service
from taskbus.settings import Settings

settings = Settings.from_env()  # read at start-up: bad settings refuse to start
logs.configure(settings.log_level)
install(flask.current_app, settings.status_threads)  # functions-framework loads this module in its app context
service = make_service(settings)


@functions_framework.http
def status(request: flask.Request) -> flask.Response:
    return service(request)
