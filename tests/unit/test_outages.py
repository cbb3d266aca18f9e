"""The per-queue back-off a worker uses on a Redis Cluster (`taskbus.channel.outages`)."""

from __future__ import annotations

import pytest
import redis

from taskbus.channel.outages import RETRY_FIRST_S, Outages
from taskbus.errors import Unavailable
from testkit.procs import wait_until


def test_standalone_lets_the_error_through_and_skips_nothing():
    outages = Outages(per_queue=False)
    with pytest.raises(Unavailable), outages.guard("a"):
        raise Unavailable("down")
    assert outages.live(["a", "b"]) == ["a", "b"] and outages.down() == []


def test_a_cluster_backs_off_the_failed_queue_alone_until_it_answers():
    outages = Outages(per_queue=True)
    with outages.guard("a"):
        raise redis.ConnectionError("refused")  # the redis-py error under an Unavailable counts too
    assert outages.live(["a", "b"]) == ["b"] and outages.down() == ["a"]
    wait_until(lambda: outages.live(["a", "b"]) == ["a", "b"], timeout=RETRY_FIRST_S * 20, message="a retried")
    with outages.guard("a"):
        pass
    assert outages.down() == []


def test_other_errors_are_not_outages():
    outages = Outages(per_queue=True)
    with pytest.raises(ValueError), outages.guard("a"):
        raise ValueError("a bug, not an outage")
    assert outages.down() == []
