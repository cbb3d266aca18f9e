"""What the start and finish scripts write on their rare paths, which read their own fields
(the common path's HMGET leaves them out), and the recently finished index's trimming (once per
script call), on both channels."""

from __future__ import annotations

import dataclasses
import json

import pytest
import redis

from taskbus.admin import Admin
from taskbus.channel import Outcome
from taskbus.keys import Keys
from taskbus.settings import Settings
from tests.contract import test_channel
from tests.contract.test_channel import enqueue, run_all, start_one

make = test_channel.make  # the channel contract's fixture: channels closed after the test


@pytest.fixture(params=["redis", "kafka"])
def channel(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_a_retry_keeps_its_start_in_the_history_and_the_failure_its_type_in_the_dead_letter(settings, make, r):
    queue, keys = settings.queues[0], Keys(settings.key_prefix)
    (task_id,) = enqueue(settings, 1, max_attempts=2)
    ch = make()
    first = start_one(ch, queue, task_id)
    started = r.hget(keys.task(task_id), "started_ms")
    assert ch.finish(queue, [Outcome(first, "retry", b'{"type":"E","message":"once"}')]) == ["scheduled"]
    history = json.loads(r.hget(keys.task(task_id), "attempt:1") or "{}")
    assert history["outcome"] == "retried" and history["started_ms"] == int(started or 0) > 0
    ch.promote_due(queue)
    second = start_one(ch, queue, task_id)
    assert ch.finish(queue, [Outcome(second, "failed", b'{"type":"E","message":"twice"}')]) == ["failed"]
    dead = [fields for _, fields in r.xrange(keys.dead(queue)) if fields["id"] == task_id]
    assert [(d["type"], d["attempts"]) for d in dead] == [("echo", "2")]


def test_a_cancel_requested_while_running_names_who_asked(settings, make, r):
    queue, keys = settings.queues[0], Keys(settings.key_prefix)
    (task_id,) = enqueue(settings, 1)
    ch = make()
    job = start_one(ch, queue, task_id)
    with Admin(settings) as admin:
        admin.cancel(task_id, "alice")
    assert ch.finish(queue, [Outcome(job, "succeeded", b"{}")]) == ["cancelled"]
    error = json.loads(r.hget(keys.task(task_id), "error") or "{}")
    assert error["type"] == "Cancelled" and "(by alice)" in error["message"]
    assert json.loads(r.hget(keys.task(task_id), "attempt:1") or "{}")["outcome"] == "succeeded"


@pytest.mark.parametrize("channel", ["redis"])
def test_the_recently_finished_index_is_trimmed(settings: Settings, make, r: redis.Redis) -> None:
    """Trimmed approximately (whole stream nodes of 100 entries), once per finish call."""
    settings = dataclasses.replace(settings, recent_max=10)
    ids = set(enqueue(settings, 250))
    runs = run_all(make(settings), settings.queues, ids)
    assert set(runs) == ids
    recent = Keys(settings.key_prefix).recent(settings.queues[0])
    assert 10 <= r.xlen(recent) <= 110
    assert r.xrevrange(recent, count=1)[0][1]["status"] == "succeeded"
