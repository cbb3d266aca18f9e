"""Celery on the Redis broker, prefork pool:
`celery -A bench.peers.celery_app worker -P prefork -c 2 --without-gossip --without-mingle --without-heartbeat`."""

import redis
from celery import Celery

from bench.peers import COUNTER, redis_url

app = Celery("bench", broker=redis_url())
app.conf.update(
    task_ignore_result=True,  # no result backend: the blog-style fire-and-forget
    task_default_queue="bench",
    worker_prefetch_multiplier=4,  # the default; 64 measured no faster here (the parent process is the limit)
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)
_client = redis.Redis.from_url(redis_url())


@app.task(name="bench.incr")
def incr() -> None:
    _client.incr(COUNTER)


def enqueue_one() -> None:
    incr.delay()
