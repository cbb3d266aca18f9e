"""Dramatiq with its Redis broker: `dramatiq bench.peers.dramatiq_app -p P -t 8`."""

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker

from bench.peers import COUNTER, redis_url

broker = RedisBroker(url=redis_url())
dramatiq.set_broker(broker)
_client = redis.Redis.from_url(redis_url())


@dramatiq.actor(queue_name="bench", max_retries=0)
def incr() -> None:
    _client.incr(COUNTER)


def enqueue_one() -> None:
    incr.send()
