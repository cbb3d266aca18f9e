"""The operator core and the Python client on the session's Valkey (`admin`, `client`), and
the session's Redis Cluster (`testkit.rcluster`: 3 masters + 3 replicas of the embedded
Valkey), started on first use by the cluster tests (`test_cluster.py`, `test_cluster_channel.py`),
and the settings that point taskbus at it. Tests isolate by key prefix and queue name (a cluster
has only db 0)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis

from local.embedded import free_port
from taskbus.admin import Admin
from taskbus.client import Client
from taskbus.settings import Settings
from testkit.rcluster import ValkeyCluster, queues_on_masters
from testkit.settings import FAST

RUN = uuid.uuid4().hex[:8]


@pytest.fixture
def admin(settings: Settings) -> Iterator[Admin]:
    a = Admin(settings)
    yield a
    a.close()


@pytest.fixture
def client(settings: Settings) -> Iterator[Client]:
    with Client(settings) as c:
        yield c


@pytest.fixture(scope="session")
def valkey_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ValkeyCluster]:
    cluster = ValkeyCluster(tmp_path_factory.mktemp("rcluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def cl_queues(valkey_cluster: ValkeyCluster) -> list[str]:
    """Three queues, one on each master (the first on the seed node, which no test kills)."""
    return queues_on_masters("cq", RUN)


@pytest.fixture(scope="session")
def cl_settings(valkey_cluster: ValkeyCluster, cl_queues: list[str]) -> Settings:
    """ENQUEUE_REPLICAS=1 throughout; a 2 s socket timeout, so WAIT may take 1.5 s before a 503 (a
    replica on a loaded test machine acknowledges late, rarely within the default's 0.6 s)."""
    return Settings(redis_url=valkey_cluster.url, redis_cluster=True, key_prefix=f"tbc{RUN}", queues=tuple(cl_queues),
                    enqueue_port=free_port(), status_port=free_port(), enqueue_replicas=1,
                    redis_socket_timeout_s=2.0, **FAST)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def rc(valkey_cluster: ValkeyCluster) -> Iterator[redis.RedisCluster]:
    client = redis.RedisCluster.from_url(valkey_cluster.url, decode_responses=True)
    yield client
    client.close()


