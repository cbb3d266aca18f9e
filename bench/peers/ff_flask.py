"""The WSGI path's ceiling: a bare functions-framework (Flask) function doing one Redis `SET`,
no taskbus code. Served like taskbus's WSGI functions: gunicorn, gthread, 2 processes, on
`functions_framework:create_app(target="set_one", source=<this file>)` (`bench/enqueue.py`)."""

import flask
import functions_framework
import redis

from bench.peers import redis_url

_redis = redis.Redis.from_url(redis_url())


@functions_framework.http
def set_one(request: flask.Request) -> tuple[str, int]:
    _redis.set("bench:ff", request.method)
    return "ok", 200
