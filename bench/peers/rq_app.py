"""RQ: `rq worker -w rq.worker.SimpleWorker -u URL bench` (no fork per job)."""

import redis
from rq import Queue

from bench.peers import COUNTER, redis_url

_client = redis.Redis.from_url(redis_url())
queue = Queue("bench", connection=redis.Redis.from_url(redis_url()))


def incr() -> None:
    _client.incr(COUNTER)


def enqueue_one() -> None:
    queue.enqueue(incr)
