"""Huey on Redis: `huey_consumer bench.peers.huey_app.huey -k thread -w 8` (or `-k process`)."""

import redis
from huey import RedisHuey

from bench.peers import COUNTER, redis_url

huey = RedisHuey("bench", url=redis_url())  # blocking dequeue (BRPOP), the default
_client = redis.Redis.from_url(redis_url())


@huey.task()
def incr() -> None:
    _client.incr(COUNTER)


def enqueue_one() -> None:
    incr()
