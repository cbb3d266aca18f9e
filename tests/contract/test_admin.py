"""The operators' operations (`taskbus.admin`) against a real Valkey and real worker processes:
cancel in every state and its race with finish, retry, pause, purge, listings, overview,
workers, and re-drives that are paced, cancellable and survive the SIGKILL of their runner."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from taskbus.admin import Admin
from taskbus.admin.redrive import Redrives
from taskbus.client import Client
from taskbus.errors import Conflict, NotFound, ValidationError
from testkit.env import env_of
from testkit.procs import Proc, wait_until


def key() -> str:
    return f"exec-{uuid.uuid4().hex[:8]}"


def status_of(admin: Admin, task_id: str) -> str:
    task = admin.task(task_id)
    assert task is not None
    return str(task["status"])


def failed_tasks(client: Client, admin: Admin, workers: Any, queue: str, n: int, marker: str) -> list[str]:
    """`n` tasks dead-lettered by a real worker (PermanentError), the worker stopped after."""
    ids = [t.id for t in client.enqueue_many([{"type": "permanent", "payload": {"key": marker}, "queue": queue}
                                              for _ in range(n)])]
    proc = workers()
    wait_until(lambda: admin.overview(queue)["counts"]["dead"] == n, timeout=30)
    proc.stop()
    return ids


def test_cancel_queued_task_never_runs(admin, client, workers, queue, r, keys):
    marker = key()
    task = client.enqueue("record", {"key": marker}, queue=queue)
    outcome, view = admin.cancel(task.id, actor="alice")
    assert (outcome, view["status"]) == ("cancelled", "cancelled")
    assert view["audit"][0]["actor"] == "alice" and view["audit"][0]["action"] == "cancel"
    with pytest.raises(Conflict) as refused:
        admin.cancel(task.id, actor="alice")
    assert refused.value.status == "cancelled"
    workers()
    wait_until(lambda: r.xlen(keys.stream(queue)) == 0, timeout=15)  # read and acknowledged unrun
    assert r.hgetall(marker) == {}
    assert status_of(admin, task.id) == "cancelled"
    assert client.get(task.id)["status"] == "cancelled"
    assert admin.overview(queue)["last_hour"]["cancelled"] == 1


def test_cancel_scheduled_task_leaves_the_schedule(admin, client, queue, r, keys):
    task = client.enqueue("echo", {}, queue=queue, delay_s=600)
    assert admin.tasks(queue, "scheduled")["tasks"][0]["id"] == task.id
    assert admin.cancel(task.id, actor="bob")[0] == "cancelled"
    assert r.zcard(keys.delayed(queue)) == 0
    assert admin.tasks(queue, "scheduled")["tasks"] == []
    finished = admin.tasks(queue, "finished")["tasks"]
    assert [(t["id"], t["status"]) for t in finished] == [(task.id, "cancelled")]


def test_cancel_running_task_cooperatively(admin, client, workers, queue, r):
    marker = key()
    workers()
    task = client.enqueue("until_cancelled", {"key": marker, "seconds": 30}, queue=queue)
    wait_until(lambda: r.hget(marker, task.id) == "running", timeout=15)
    began = time.monotonic()
    outcome, view = admin.cancel(task.id, actor="carol")
    assert (outcome, view["status"]) == ("cancelling", "running")
    assert view["cancel_requested_at"] is not None
    wait_until(lambda: status_of(admin, task.id) == "cancelled", timeout=10)
    assert time.monotonic() - began < 5  # the handler stopped when told, long before its 30 s
    detail = admin.task(task.id)
    assert detail["history"][-1]["outcome"] == "cancelled" and detail["error"]["type"] == "Cancelled"
    with pytest.raises(Conflict):
        admin.cancel(task.id, actor="carol")


def test_cancel_running_task_that_ignores_it_ends_after_the_grace(admin, client, workers, queue, r):
    marker = key()
    workers(cancel_grace_s=0.5, concurrency=1)
    task = client.enqueue("ignores_cancel", {"key": marker, "seconds": 60}, queue=queue)
    wait_until(lambda: r.hget(marker, task.id) == "running", timeout=15)
    began = time.monotonic()
    assert admin.cancel(task.id, actor="dave")[0] == "cancelling"
    wait_until(lambda: status_of(admin, task.id) == "cancelled", timeout=10)
    assert time.monotonic() - began < 4
    after = client.enqueue("echo", {"x": 1}, queue=queue)  # the slot was given back: the worker goes on
    assert client.wait(after.id, 15)["status"] == "succeeded"


def test_cancel_and_finish_race_ends_in_exactly_one_state(admin, client, workers, queue, r, keys):
    """500 short tasks, each cancelled as it is enqueued while 8 runners finish them: whichever
    is recorded first wins, never both."""
    marker = key()
    workers(concurrency=8)
    n = 500
    ids: list[str] = []
    replies: dict[str, str] = {}

    def cancel(task_id: str) -> tuple[str, str]:
        try:
            return task_id, admin.cancel(task_id, actor="race")[0]
        except Conflict as exc:
            return task_id, f"terminal:{exc.status}"

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = []
        for i in range(n):
            task = client.enqueue("record", {"key": marker, "seconds": (i % 4) / 1000}, queue=queue)
            ids.append(task.id)
            futures.append(pool.submit(cancel, task.id))
        replies = dict(f.result() for f in futures)
    wait_until(lambda: all(status_of(admin, t) in ("succeeded", "cancelled") for t in ids), timeout=60)
    runs = r.hgetall(marker)
    pipe = r.pipeline()
    for t in ids:
        pipe.hget(keys.task(t), "terminal_writes")
    writes = pipe.execute()
    outcomes = {"cancelled": 0, "cancelling": 0, "terminal": 0}
    for t, w in zip(ids, writes):
        final, reply = status_of(admin, t), replies[t]
        assert w == "1", (t, w)
        outcomes[reply.split(":")[0]] += 1
        if reply == "cancelled":  # cancelled before it started: it never runs
            assert final == "cancelled" and t not in runs
        elif reply == "cancelling":  # the request landed first: cancelled, whatever the handler did
            assert final == "cancelled"
        else:  # the finish landed first: it stays succeeded
            assert reply == "terminal:succeeded" and final == "succeeded" and runs.get(t) == "1"
    assert sum(outcomes.values()) == n
    recent = [f["id"] for _, f in r.xrange(keys.recent(queue))]
    assert sorted(recent) == sorted(ids)  # one finished entry each: one terminal write each
    last_hour = admin.overview(queue)["last_hour"]
    assert last_hour["succeeded"] + last_hour["cancelled"] == n


def test_retry_a_failed_task_keeps_its_history(admin, client, workers, queue, r):
    marker = key()
    [task_id] = failed_tasks(client, admin, workers, queue, 1, marker)
    assert admin.tasks(queue, "dead")["tasks"][0]["id"] == task_id
    view = admin.retry(task_id, actor="erin")
    assert view["status"] == "queued" and view["audit"][-1]["action"] == "retry"
    assert admin.overview(queue)["counts"]["dead"] == 0  # its dead letter left with it
    workers()
    wait_until(lambda: status_of(admin, task_id) == "failed", timeout=15)
    detail = admin.task(task_id)
    assert [h["attempt"] for h in detail["history"]] == [1, 2]
    assert [h["outcome"] for h in detail["history"]] == ["failed", "failed"]
    assert detail["attempts"] == 2 and detail["max_attempts"] == 1 + 5  # the new series: 5 more
    assert r.hget(marker, task_id) == "2"
    with pytest.raises(Conflict):
        admin.retry(client.enqueue("echo", {}, queue=queue, delay_s=600).id, actor="erin")
    with pytest.raises(NotFound):
        admin.retry(f"{queue}~{'0' * 32}", actor="erin")


def test_pause_holds_new_work_and_lets_running_work_finish(admin, client, workers, queue, r):
    marker = key()
    workers()
    slow = client.enqueue("record", {"key": marker, "seconds": 1.0}, queue=queue)
    wait_until(lambda: status_of(admin, slow.id) == "running", timeout=15)
    overview = admin.pause(queue, actor="frank")
    assert overview["paused"] and overview["paused_by"] == "frank"
    time.sleep(0.6)  # past the workers' PAUSE_CHECK_S: from here on they must start nothing
    held = [client.enqueue("record", {"key": marker}, queue=queue).id for _ in range(5)]
    assert client.wait(slow.id, 10)["status"] == "succeeded"  # in-flight work finishes
    deadline = time.monotonic() + 1.5  # a window in which nothing may start (not a synchronisation)
    while time.monotonic() < deadline:
        assert all(status_of(admin, t) == "queued" for t in held)
        time.sleep(0.05)
    assert admin.overview(queue)["counts"]["queued"] >= 5
    admin.resume(queue, actor="frank")
    wait_until(lambda: all(status_of(admin, t) == "succeeded" for t in held), timeout=15)


def test_purge_queued_and_dead(admin, client, workers, queue, r, keys):
    marker = key()
    failed_tasks(client, admin, workers, queue, 3, marker)
    queued = [t.id for t in client.enqueue_many([{"type": "record", "payload": {"key": marker}, "queue": queue}] * 7)]
    with pytest.raises(ValidationError):
        admin.purge(queue, "running", actor="gina")
    assert admin.purge(queue, "queued", actor="gina") == 7
    assert all(status_of(admin, t) == "cancelled" for t in queued)
    assert admin.purge(queue, "dead", actor="gina") == 3
    counts = admin.overview(queue)["counts"]
    assert (counts["queued"], counts["dead"]) == (0, 0)
    workers()
    assert client.wait(client.enqueue("echo", {}, queue=queue).id, 15)["status"] == "succeeded"
    assert all(r.hget(marker, t) is None for t in queued)


def test_listings_page_through_every_task_once(admin, client, queue):
    ids = [t.id for t in client.enqueue_many([{"type": "echo", "payload": {"i": i}, "queue": queue}
                                              for i in range(7)])]
    seen, cursor, pages = [], None, 0
    while True:
        page = admin.tasks(queue, "queued", cursor=cursor, limit=3)
        seen += [t["id"] for t in page["tasks"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids and pages == 3
    assert "payload" not in admin.tasks(queue, "queued")["tasks"][0]
    for bad in ({"limit": 0}, {"limit": 201}, {"cursor": "x"}):
        with pytest.raises(ValidationError):
            admin.tasks(queue, "queued", **bad)
    with pytest.raises(ValidationError):
        admin.tasks(queue, "bogus")


def test_overview_counts_and_ages(admin, client, queue, r, keys):
    client.enqueue_many([{"type": "echo", "queue": queue}] * 4)
    client.enqueue_many([{"type": "echo", "queue": queue, "delay_s": 600}] * 2)
    r.xadd(keys.dead(queue), {"id": "", "type": "", "error": "{}"})
    o = admin.overview(queue)
    assert o["counts"] == {"queued": 4, "scheduled": 2, "throttled": 0, "running": 0, "dead": 1}
    assert o["oldest_age_s"]["queued"] is not None and 0 <= o["oldest_age_s"]["queued"] < 30
    assert o["oldest_age_s"]["running"] is None
    assert len(o["per_minute"]) == 15 and len(o["per_10s"]) == 90
    assert queue in admin.queues()
    assert any(q["queue"] == queue for q in admin.overviews())


def test_workers_are_listed_and_a_killed_one_drops_out(admin, workers, queue):
    proc = workers()
    wait_until(lambda: any(w["queues"] == [queue] for w in admin.workers(queue)), timeout=15)
    [w] = admin.workers(queue)
    assert w["pid"] == proc.pid and w["concurrency"] == 4 and "record" in w["types"]
    assert w["version"] and w["in_flight"] == 0
    proc.signal(signal.SIGKILL)
    wait_until(lambda: admin.workers(queue) == [], timeout=15)  # two leases (2 s each) without a heartbeat


REDRIVER = """
import sys, threading
from taskbus.admin.redrive import Redrives
from taskbus.settings import Settings
Redrives(Settings.from_env()).run(sys.argv[1], threading.Event())
"""


def test_redrive_is_paced_cancellable_and_survives_the_kill_of_its_runner(
        admin, client, workers, queue, settings, r, keys, tmp_path: Path):
    n = 1000
    marker = key()
    failed_tasks(client, admin, workers, queue, n, marker)
    redrives = Redrives(settings)
    assert redrives.create(queue, actor="hank", dry_run=True) == {"dry_run": True, "matched": n}
    assert redrives.create(queue, actor="hank", error_type="Nope", dry_run=True)["matched"] == 0
    job = redrives.create(queue, actor="hank", rate=100)
    assert (job["state"], job["total"], job["moved"]) == ("running", n, 0)
    runner = Proc("redriver", [sys.executable, "-c", REDRIVER, job["id"]], env_of(settings), tmp_path / "r1.log")
    began = time.monotonic()
    wait_until(lambda: redrives.get(job["id"])["moved"] >= 300, timeout=20)
    runner.signal(signal.SIGKILL)  # mid-run: its last step landed whole or not at all
    runner.wait(5)
    taken_over = redrives.get(job["id"])["moved"]
    assert 300 <= taken_over < n
    runner2 = Proc("redriver", [sys.executable, "-c", REDRIVER, job["id"]], env_of(settings), tmp_path / "r2.log")
    wait_until(lambda: redrives.get(job["id"])["moved"] >= 600, timeout=30)  # after the 5 s lease of the dead one
    cancelled = redrives.cancel(job["id"], actor="hank")
    assert cancelled["state"] == "cancelled" and cancelled["cancelled_by"] == "hank"
    runner2.wait(10)  # fenced off: it stops by itself
    moved = redrives.get(job["id"])["moved"]
    assert 600 <= moved < n
    elapsed = time.monotonic() - began
    assert elapsed >= (moved - 10) / 100  # never faster than the rate (100/s)
    with pytest.raises(Conflict):
        redrives.cancel(job["id"], actor="hank")
    queued = [t for t in admin.tasks(queue, "queued", limit=200)["tasks"]]
    assert queued and all(t["status"] == "queued" for t in queued)
    assert r.xlen(keys.stream(queue)) == moved  # each moved once: one entry each, never two
    assert admin.overview(queue)["counts"]["dead"] == n - moved
    one = admin.task(queued[0]["id"])
    assert one["audit"][-1]["action"] == "redrive" and one["audit"][-1]["actor"] == "hank"
    # the rest, by a worker's runner: each task runs once more, none twice
    rest = redrives.create(queue, actor="hank", rate=5000)
    assert rest["total"] == n - moved
    workers()
    wait_until(lambda: redrives.get(rest["id"])["state"] == "done", timeout=30)
    wait_until(lambda: admin.overview(queue)["counts"]["dead"] == n, timeout=60)  # they fail again
    runs = r.hgetall(marker)
    assert len(runs) == n and set(runs.values()) == {"2"}
    redrives.close()


def test_redrive_of_an_expired_task_recreates_it(admin, client, workers, queue, settings, r, keys):
    marker = key()
    [task_id] = failed_tasks(client, admin, workers, queue, 1, marker)
    r.delete(keys.task(task_id))  # RESULT_TTL_S passed; the dead letter (DEAD_TTL_S) remains
    redrives = Redrives(dataclasses.replace(settings))
    job = redrives.create(queue, actor="ivy", rate=1000)
    import threading
    done = redrives.run(job["id"], threading.Event())
    assert (done["state"], done["moved"]) == ("done", 1)
    task = admin.task(task_id)
    assert task["status"] == "queued" and task["payload"] == {"key": marker} and task["type"] == "permanent"
    redrives.close()


def test_dead_letters_keep_what_a_redrive_needs(admin, client, workers, queue, r, keys):
    [task_id] = failed_tasks(client, admin, workers, queue, 1, key())
    [(entry, fields)] = r.xrange(keys.dead(queue))
    assert fields["id"] == task_id and fields["queue"] == queue and fields["type"] == "permanent"
    assert fields["payload"] and fields["max_attempts"] == "5"
    assert r.hget(keys.task(task_id), "dead_entry") == entry


def test_unknown_ids_are_not_found(admin, queue):
    assert admin.task("nope") is None
    with pytest.raises(NotFound):
        admin.cancel("nope", actor="x")
    with pytest.raises(NotFound):
        admin.cancel(f"{queue}~{'0' * 32}", actor="x")


def test_redis_down_is_unavailable(settings):
    from local.embedded import free_port
    from taskbus.errors import Unavailable
    down = Admin(dataclasses.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    with pytest.raises(Unavailable):
        down.overview("default")
    with pytest.raises(Unavailable):
        down.cancel(f"default~{'0' * 32}", actor="x")





def test_applications_cancel_through_the_client(client, queue):
    task = client.enqueue("echo", {}, queue=queue, delay_s=600)
    assert client.cancel(task.id) == "cancelled"
    assert client.get(task.id)["status"] == "cancelled"
    with pytest.raises(Conflict):
        client.cancel(task.id)


@pytest.mark.parametrize("channel", ["kafka"])
def test_on_the_kafka_channel_cancel_retry_and_pause_hold(admin, client, workers, queue, r, channel):
    """The same operations with Kafka carrying the tasks (Redis holds their state)."""
    marker = key()
    workers()
    running = client.enqueue("until_cancelled", {"key": marker, "seconds": 30}, queue=queue)
    wait_until(lambda: r.hget(marker, running.id) == "running", timeout=30)
    assert admin.cancel(running.id, actor="kim")[0] == "cancelling"
    wait_until(lambda: status_of(admin, running.id) == "cancelled", timeout=10)
    failed = client.enqueue("permanent", {"key": marker}, queue=queue)
    wait_until(lambda: status_of(admin, failed.id) == "failed", timeout=30)
    assert admin.retry(failed.id, actor="kim")["status"] == "queued"
    wait_until(lambda: r.hget(marker, failed.id) == "2", timeout=30)  # published again and run again
    admin.pause(queue, actor="kim")
    time.sleep(0.6)  # past the workers' PAUSE_CHECK_S
    held = client.enqueue("record", {"key": marker}, queue=queue)
    deadline = time.monotonic() + 1.5  # a window in which it may not start
    while time.monotonic() < deadline:
        assert status_of(admin, held.id) == "queued"
        time.sleep(0.05)
    admin.resume(queue, actor="kim")
    wait_until(lambda: status_of(admin, held.id) == "succeeded", timeout=30)
