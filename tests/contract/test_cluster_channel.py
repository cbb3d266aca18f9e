"""The channel contract (`test_channel.py`'s Redis Streams tests) again, on the session's Redis
Cluster: the same test functions, run with this module's `settings` and `r`. A consumer of two
queues reads each on its own master."""

from __future__ import annotations

import dataclasses

import pytest
import redis

from taskbus.settings import Settings
from tests.contract.test_channel import (  # noqa: F401 - collected here again, on the cluster
    make,
    test_a_handed_back_task_is_taken_over_and_the_old_attempt_is_fenced_off,
    test_a_malformed_entry_is_dead_lettered_and_delivery_goes_on,
    test_a_retry_is_scheduled_then_delivered_again_as_the_next_attempt,
    test_every_queue_of_a_consumer_is_served_with_its_delays_and_its_outbox,
    test_tasks_queued_before_any_consumer_each_start_exactly_once,
)

pytestmark = pytest.mark.xdist_group("cluster")


@pytest.fixture
def channel() -> str:
    return "redis"


@pytest.fixture
def settings(cl_settings: Settings, queue: str) -> Settings:
    return dataclasses.replace(cl_settings, queues=(queue,), enqueue_replicas=0)


@pytest.fixture
def r(rc: redis.RedisCluster) -> redis.RedisCluster:
    return rc
