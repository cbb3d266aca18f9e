"""Redis clients with bounded timeouts, and the translation of redis-py errors into ours.

The one place that builds clients: `connect` and `connect_async` return a standalone client, or,
with REDIS_CLUSTER=true or a `redis+cluster://` URL, a Redis Cluster client seeded by REDIS_URL's
node(s). A cluster client is typed as its standalone twin: it has the same command methods, and
the few paths that differ on a cluster (`taskbus.state.cluster`) ask `is_cluster` first.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import hiredis
import redis
import redis.asyncio
import redis.asyncio.cluster
import redis.cluster
import redis.exceptions as rex
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff
from redis.retry import Retry

from taskbus.errors import Unavailable
from taskbus.settings import Settings

# Errors after which a retry may succeed: the server is down, slow, loading or a replica; on a
# cluster also a failover in progress (CLUSTERDOWN, TRYAGAIN, MASTERDOWN, a slot moved or not
# covered, redis-py's "TTL exhausted" and its RedisClusterException, which is no RedisError).
REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError,
                rex.ClusterDownError, rex.TryAgainError, rex.MasterDownError, rex.MovedError, rex.AskError,
                rex.ClusterError, rex.RedisClusterException)


def is_cluster(client: object) -> bool:
    return isinstance(client, (redis.cluster.RedisCluster, redis.asyncio.cluster.RedisCluster))


def cluster_url(settings: Settings) -> tuple[str, list[tuple[str, int]]]:
    """REDIS_URL as redis-py's cluster `from_url` takes it (`redis+cluster://` becomes `redis://`),
    and the seed nodes after the first of a comma-separated list (`redis+cluster://a:7000,b:7001`)."""
    parts = urlsplit(settings.redis_url)
    scheme = parts.scheme.removesuffix("+cluster")
    auth, _, hosts = parts.netloc.rpartition("@")
    first, *others = hosts.split(",")
    seeds = [(host, int(port or 6379)) for host, _, port in (o.partition(":") for o in others)]
    netloc = f"{auth}@{first}" if auth else first
    return urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment)), seeds


def seed_url(settings: Settings) -> str:
    """A plain `redis://` URL of REDIS_URL's first node (the start-up checks ping it)."""
    return cluster_url(settings)[0] if settings.cluster else settings.redis_url


def _options(settings: Settings, socket_timeout_s: float | None) -> dict[str, Any]:
    return {
        "socket_timeout": socket_timeout_s or settings.redis_socket_timeout_s,
        "socket_connect_timeout": settings.redis_connect_timeout_s,
        "decode_responses": True,
        "protocol": 2,
        "driver_info": None,  # no CLIENT SETINFO at connect: two round trips fewer that could hang
    }


def connect(
    settings: Settings, *, socket_timeout_s: float | None = None, max_connections: int | None = None
) -> redis.Redis:
    """A client with bounded timeouts and a small retry budget (redis-py's default retries 10 times)."""
    options = _options(settings, socket_timeout_s)
    retry = Retry(ExponentialBackoff(cap=0.2, base=0.02), settings.redis_retries)
    if settings.cluster:
        url, seeds = cluster_url(settings)
        client = redis.RedisCluster.from_url(
            url, startup_nodes=[redis.cluster.ClusterNode(h, p) for h, p in seeds] or None,  # type: ignore[no-untyped-call]
            connection_pool_class=redis.BlockingConnectionPool, timeout=settings.redis_socket_timeout_s,
            max_connections=max_connections or settings.redis_max_connections,  # per node
            retry=retry, **options,
        )
        return cast(redis.Redis, client)
    pool = redis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=max_connections or settings.redis_max_connections,
        timeout=settings.redis_socket_timeout_s,  # wait for a free connection at most this long
        retry=retry,
        **options,
    )
    return redis.Redis(connection_pool=pool)


def connect_async(settings: Settings, *, socket_timeout_s: float | None = None,
                  max_connections: int | None = None, pool_wait_s: float | None = None) -> redis.asyncio.Redis:
    """The asyncio twin of `connect`: bounded timeouts, a small retry budget."""
    options = _options(settings, socket_timeout_s)
    retry = AsyncRetry(ExponentialBackoff(cap=0.2, base=0.02), settings.redis_retries)
    if settings.cluster:
        url, seeds = cluster_url(settings)
        client = redis.asyncio.RedisCluster.from_url(
            url, startup_nodes=[redis.asyncio.cluster.ClusterNode(h, p) for h, p in seeds] or None,
            max_connections=max_connections or settings.redis_max_connections, retry=retry, **options,
        )
        return cast(redis.asyncio.Redis, client)
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        settings.redis_url,
        connection_class=PackedConnection,  # a rediss:// or unix:// URL sets its own
        max_connections=max_connections or settings.redis_max_connections,
        timeout=pool_wait_s or settings.redis_socket_timeout_s,
        retry=retry,
        **options,
    )
    return redis.asyncio.Redis(connection_pool=pool)


class PackedConnection(redis.asyncio.Connection):
    """redis-py's asyncio connection packs commands in Python (about 6 µs per argument: an
    enqueue's 20 cost more than the rest of the request); its sync connection uses hiredis's C
    packer, and so does this one. (A `rediss://` or `unix://` URL keeps redis-py's class.)"""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise redis.DataError(str(exc)) from exc


class LoopClient:
    """`connect_async`'s client for the running event loop, made on first use in each loop: an
    asyncio connection belongs to the loop that opened it (a gunicorn worker has one loop; a
    test may run several one after the other)."""

    def __init__(self, settings: Settings, **options: Any) -> None:
        self.settings = settings
        self.options = options  # connect_async's
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop of the latest client
        self._client: redis.asyncio.Redis | None = None

    def get(self) -> redis.asyncio.Redis:
        """The running loop's client (a new one in a loop not seen last)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self.loop is not loop:
            self.loop, self._client = loop, connect_async(self.settings, **self.options)
        return self._client


def connect_async_node(settings: Settings, host: str, port: int, max_connections: int) -> redis.asyncio.Redis:
    """A standalone asyncio client of one cluster node (a sharded subscription lives on the
    node that owns its channel's slot), with REDIS_URL's credentials and timeouts."""
    parts = urlsplit(cluster_url(settings)[0])
    auth, _, _ = parts.netloc.rpartition("@")
    url = urlunsplit((parts.scheme, f"{auth}@{host}:{port}" if auth else f"{host}:{port}", "/0", parts.query, ""))
    node_settings = dataclasses.replace(settings, redis_url=url, redis_cluster=False)
    return connect_async(node_settings, max_connections=max_connections)


@contextlib.contextmanager
def unavailable_on_redis_errors() -> Iterator[None]:
    """Turn a Redis outage into `Unavailable`, so no caller ever handles a redis-py exception."""
    try:
        yield
    except REDIS_ERRORS as exc:
        raise Unavailable(f"Redis unavailable: {type(exc).__name__}: {str(exc)[:200]}") from exc
    except redis.ConnectionError as exc:  # pool exhausted raises ConnectionError too
        raise Unavailable(str(exc)) from exc
