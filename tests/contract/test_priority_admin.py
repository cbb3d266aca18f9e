"""The operators' view of a queue with priority levels in use (against the session's Valkey):
the overview counts and ages, the queued listing and purge see every level's stream, and a
consumer's reads, starts and finishes on the level streams keep them consistent."""

from __future__ import annotations

import pytest

from taskbus.channel import Outcome, Run
from taskbus.channel.streams import StreamsChannel
from taskbus.client import Client
from taskbus.errors import ValidationError
from testkit.procs import wait_until


def enqueue(client: Client, queue: str, n: int, priority: int | None = None) -> list[str]:
    return [e.id for e in client.enqueue_many([{"type": "echo", "queue": queue, "priority": priority}] * n)]


def test_overview_counts_queued_and_running_tasks_of_every_level(admin, client, settings, queue):
    ones = enqueue(client, queue, 4, priority=1)
    o = admin.overview(queue)
    assert o["counts"]["queued"] == 4, "level-1 tasks are queued though the default stream is empty"
    assert o["oldest_age_s"]["queued"] is not None
    enqueue(client, queue, 3)
    nines = enqueue(client, queue, 2, priority=9)
    assert admin.overview(queue)["counts"]["queued"] == 9
    channel = StreamsChannel(settings, "c1")
    try:
        channel.open()
        found = wait_until(lambda: channel.read(2, 100), timeout=10, message="a read")
        assert [d.task_id for d in found] == nines, "the read takes the 9s first"
        jobs = [v.job for v in channel.start(queue, found) if isinstance(v, Run)]
        o = admin.overview(queue)
        assert (o["counts"]["queued"], o["counts"]["running"]) == (7, 2)
        assert o["oldest_age_s"]["running"] is not None
        running = admin.tasks(queue, "running", limit=1)
        more = admin.tasks(queue, "running", cursor=running["next_cursor"], limit=1)
        assert [(t["id"], t["priority"]) for t in running["tasks"] + more["tasks"]] == [(t, 9) for t in nines]
        assert channel.heartbeat(queue, jobs) == [], "the level-9 leases are ours"
        assert channel.finish(queue, [Outcome(j, "succeeded", b"{}") for j in jobs]) == ["succeeded"] * 2
        assert admin.overview(queue)["counts"]["running"] == 0
    finally:
        channel.close(drained=True)
    assert all(admin.task(t)["status"] == "queued" for t in ones)  # type: ignore[index]


def test_queued_listing_pages_through_every_level_highest_first(admin, client, queue):
    fives, zeros, nines = enqueue(client, queue, 3), enqueue(client, queue, 2, 0), enqueue(client, queue, 2, 9)
    seen, cursor, pages = [], None, 0
    while True:
        page = admin.tasks(queue, "queued", cursor=cursor, limit=3)
        seen += [(t["id"], t["priority"]) for t in page["tasks"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [(t, 9) for t in nines] + [(t, 5) for t in fives] + [(t, 0) for t in zeros]
    assert pages == 3
    with pytest.raises(ValidationError):
        admin.tasks(queue, "queued", cursor="1-0@x")


def test_purge_empties_every_level(admin, client, queue, r, keys):
    ids = enqueue(client, queue, 2) + enqueue(client, queue, 3, priority=7) + enqueue(client, queue, 1, priority=2)
    assert admin.purge(queue, "queued", actor="gina") == 6
    assert all(admin.task(t)["status"] == "cancelled" for t in ids)  # type: ignore[index]
    assert admin.overview(queue)["counts"]["queued"] == 0
    assert r.xlen(keys.level_stream(queue, 7)) == r.xlen(keys.level_stream(queue, 2)) == 0


def test_an_operators_retry_keeps_the_level(admin, client, settings, queue, r, keys):
    [task_id] = enqueue(client, queue, 1, priority=9)
    channel = StreamsChannel(settings, "c1")
    try:
        channel.open()
        found = wait_until(lambda: channel.read(1, 100), timeout=10, message="a read")
        [job] = [v.job for v in channel.start(queue, found) if isinstance(v, Run)]
        error = b'{"type": "Boom", "message": "failed for the test", "traceback": null}'
        assert channel.finish(queue, [Outcome(job, "failed", error)]) == ["failed"]
        admin.retry(task_id, actor="gina")
        assert admin.task(task_id)["status"] == "queued"  # type: ignore[index]
        assert r.xlen(keys.stream(queue)) == 0, "not put in the default level's stream"
        wait_until(lambda: channel.promote_due(queue) >= -1 and r.xlen(keys.level_stream(queue, 9)) == 1,
                   timeout=10, message="promoted into level 9")
    finally:
        channel.close(drained=True)
