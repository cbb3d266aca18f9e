"""Redis clients with bounded timeouts, and the translation of redis-py errors into ours."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import redis
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from taskbus.errors import Unavailable
from taskbus.settings import Settings

# Errors after which a retry may succeed: the server is down, slow, loading or a replica.
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError)


def connect(
    settings: Settings, *, socket_timeout_s: float | None = None, max_connections: int | None = None
) -> redis.Redis:
    """A client with bounded timeouts and a small retry budget (redis-py's default retries 10 times)."""
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections or settings.redis_max_connections,
        timeout=settings.redis_socket_timeout_s,  # wait for a free connection at most this long
        socket_timeout=socket_timeout_s or settings.redis_socket_timeout_s,
        socket_connect_timeout=settings.redis_connect_timeout_s,
        retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), settings.redis_retries),
        decode_responses=True,
        protocol=2,
        driver_info=None,  # no CLIENT SETINFO at connect: two round trips fewer that could hang
    )
    return redis.Redis(connection_pool=pool)


@contextlib.contextmanager
def unavailable_on_redis_errors() -> Iterator[None]:
    """Turn a Redis outage into `Unavailable`, so no caller ever handles a redis-py exception."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise Unavailable(f"Redis unavailable: {type(exc).__name__}: {str(exc)[:200]}") from exc
    except redis.ConnectionError as exc:  # pool exhausted raises ConnectionError too
        raise Unavailable(str(exc)) from exc
