"""taskbus on a real Redis Cluster (3 masters + 3 replicas of the embedded Valkey, one for the
whole session): HTTP enqueue and status through real gunicorn functions, a real worker process
draining queues that live on three different masters, idempotency, webhook dedupe, delays,
retries, dead letters, the console's overview, ENQUEUE_REPLICAS, and a master SIGKILLed while
tasks flow (last: it changes which node is master)."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from taskbus.admin import Admin
from taskbus.client import Client
from taskbus.errors import DataLost, Unavailable
from taskbus.keys import Keys
from taskbus.schedules.model import Schedule
from taskbus.schedules.slots import slot_task_id
from taskbus.schedules.store import ScheduleStore
from taskbus.settings import Settings
from taskbus.state.reader import StatusReader
from testkit.client import enqueue, finished, status
from testkit.functions import FunctionPair, start_functions
from testkit.procs import Proc, spawn, wait_until
from testkit.rcluster import primary_with_replica, queues_on_masters
from testkit.settings import kafka_settings
from testkit.signing import sign_github

pytestmark = pytest.mark.xdist_group("cluster")  # with `--dist loadgroup`: one cluster for all of them
GH_SECRET = "cluster-gh-secret"


@pytest.fixture(scope="session")
def cl_functions(cl_settings: Settings, cl_queues: list[str],
                 tmp_path_factory: pytest.TempPathFactory) -> Iterator[FunctionPair]:
    hooks = {"WEBHOOK_SOURCES": "github", "WEBHOOK_GITHUB_SECRET": GH_SECRET, "WEBHOOK_GITHUB_QUEUE": cl_queues[1]}
    pair = start_functions(cl_settings, tmp_path_factory.mktemp("cl-functions"), enqueue_env=hooks)
    yield pair
    pair.stop()


@pytest.fixture(scope="session")
def cl_worker(cl_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = spawn("worker", cl_settings, tmp_path_factory.mktemp("cl-worker"))
    yield proc
    proc.kill()


@pytest.fixture
def urls(cl_functions: FunctionPair, cl_worker: Proc) -> dict[str, str]:
    return cl_functions.urls


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def executions_key(settings: Settings, queues: list[str]) -> str:
    """Where `tests.handlers.record` counts runs: on queue a's master, the seed node its plain
    client reaches (never the one the failover test kills)."""
    return f"{settings.key_prefix}:{{{queues[0]}}}:executions:{uuid.uuid4().hex[:6]}"


def test_queues_live_on_three_masters(valkey_cluster, cl_queues, cl_settings):
    keys = Keys(cl_settings.key_prefix)
    assert len({valkey_cluster.master_of(keys.stream(q)).port for q in cl_queues}) == 3


def test_a_script_given_two_queues_keys_is_refused_crossslot(rc, cl_settings, cl_queues):
    """The guard against keys built or mixed across queues: the server refuses them."""
    keys = Keys(cl_settings.key_prefix)
    with pytest.raises((redis.ResponseError, redis.exceptions.RedisClusterException)):
        rc.eval("return redis.call('EXISTS', KEYS[1], KEYS[2])", 2, keys.stream(cl_queues[0]),
                keys.stream(cl_queues[1]))


def test_http_enqueue_drains_on_every_master_and_long_polls_wake(http, urls, cl_queues):
    ids = [enqueue(http, urls, q, "sleep", {"seconds": 0.3}) for q in cl_queues]
    began = time.monotonic()
    tasks = [status(http, urls, task_id, wait=20) for task_id in ids]
    assert [t["status"] for t in tasks] == ["succeeded"] * 3
    assert time.monotonic() - began < 10, "each long-poll answers when its task finishes"
    echoed = [enqueue(http, urls, q, "echo", {"q": q}) for q in cl_queues]
    assert [finished(http, urls, t)["result"] for t in echoed] == [{"q": q} for q in cl_queues]


def test_batch_over_three_masters_waits_for_a_replica_on_each(cl_settings, cl_queues, urls):
    """One enqueue_many over three masters: one pipeline per node, each with its WAITAOF and WAIT."""
    settings = dataclasses.replace(cl_settings, enqueue_fsync=True, enqueue_replicas=1)
    with Client(settings) as client:
        done = client.enqueue_many([{"type": "echo", "queue": q, "payload": {"i": i}}
                                    for i, q in enumerate(cl_queues * 4)])
        assert [d.status for d in done] == ["queued"] * 12
        assert {d.id.split("~")[0] for d in done} == set(cl_queues)
        assert all(client.wait(d.id, 20)["status"] == "succeeded" for d in done)  # type: ignore[index]


def test_a_master_without_the_script_reruns_only_its_own_calls(valkey_cluster, cl_settings, rc):
    """As after a failover (a promoted replica never loaded the scripts): one master answers
    NOSCRIPT while the others run their calls; only the refused calls run again, none twice."""
    queues = queues_on_masters("noscript", uuid.uuid4().hex[:6])  # no worker reads these
    keys = Keys(cl_settings.key_prefix)
    with Client(cl_settings) as client:
        client.enqueue_many([{"type": "echo", "queue": q} for q in queues])  # the scripts are loaded
        valkey_cluster.master_of(keys.stream(queues[1])).call("SCRIPT", "FLUSH")
        done = client.enqueue_many([{"type": "echo", "queue": q, "payload": {"i": i}}
                                    for i, q in enumerate(queues * 5)])
    assert [d.status for d in done] == ["queued"] * 15
    assert [rc.xlen(keys.stream(q)) for q in queues] == [6, 6, 6], "every task once in its stream"


def test_idempotent_replay_and_webhook_dedupe(http, urls, cl_queues):
    body = {"type": "echo", "queue": cl_queues[2], "payload": {"x": 1}}
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex}"}
    first = http.post(urls["enqueue"] + "/tasks", json=body, headers=key)
    again = http.post(urls["enqueue"] + "/tasks", json=body, headers=key)
    assert (first.status_code, again.status_code) == (202, 200), again.text
    assert first.json()["id"] == again.json()["id"]

    raw = json.dumps({"ref": "refs/heads/main"}).encode()
    headers = {"Content-Type": "application/json", **sign_github(GH_SECRET, raw, delivery=f"d-{uuid.uuid4().hex}")}
    hook = http.post(urls["enqueue"] + "/hooks/github", content=raw, headers=headers)
    redelivered = http.post(urls["enqueue"] + "/hooks/github", content=raw, headers=headers)
    assert (hook.status_code, redelivered.status_code) == (202, 200), redelivered.text
    assert hook.json()["id"] == redelivered.json()["id"] and hook.json()["id"].startswith(cl_queues[1] + "~")


def test_delays_retries_and_dead_letters_then_console_overview(http, urls, cl_queues, cl_settings):
    delayed = enqueue(http, urls, cl_queues[1], "echo", {"late": True}, delay_s=1.0)
    failing = enqueue(http, urls, cl_queues[2], "flaky3", max_attempts=2)
    assert status(http, urls, delayed)["status"] == "scheduled"
    assert finished(http, urls, delayed)["status"] == "succeeded"
    task = finished(http, urls, failing, timeout=30)
    assert (task["status"], task["attempts"]) == ("failed", 2)
    admin = Admin(cl_settings)
    try:
        overview = {o["queue"]: o for o in admin.overviews()}
        assert set(cl_queues) <= set(overview)
        assert overview[cl_queues[2]]["counts"]["dead"] >= 1
        assert overview[cl_queues[2]]["last_hour"]["failed"] >= 1
        assert overview[cl_queues[0]]["workers"] == 1
        dead = admin.tasks(cl_queues[2], "dead")
        assert failing in json.dumps(dead)
    finally:
        admin.close()


def test_sync_long_poll_and_health_on_the_cluster(cl_settings, cl_queues, urls, rc):
    """The WSGI path's reader: ClusterPubSub long-poll, and the health check one key per queue."""
    reader = StatusReader(cl_settings)
    try:
        reader.ping()
        with Client(cl_settings) as client:
            task = client.enqueue("sleep", {"seconds": 0.3}, queue=cl_queues[2])
            assert (reader.wait(task.id, 20) or {}).get("status") == "succeeded"
        flag = Keys(cl_settings.key_prefix).data_lost(cl_queues[1])
        rc.set(flag, "test", ex=30)
        with pytest.raises(DataLost, match=cl_queues[1]):
            reader.ping()
        rc.delete(flag)
    finally:
        reader.close()


def test_schedules_sync_fire_and_delete_over_three_masters(cl_settings, cl_queues, urls):
    """The schedule store's pipelined upsert and load span the masters; the session's worker
    fires each queue's schedule (its runner loads what is stored) and runs the slot's task."""
    store = ScheduleStore(cl_settings)
    name = f"tick-{uuid.uuid4().hex[:6]}"
    try:
        store.sync([Schedule(name, "echo", every_s=1, queue=q, payload={"q": q}) for q in cl_queues])
        initial = {st.schedule.queue: st.last_s for st in store.load(cl_queues) if st.schedule.name == name}
        assert sorted(initial) == sorted(cl_queues)

        def fired() -> list[str] | None:
            now = {st.schedule.queue: st.last_s for st in store.load(cl_queues) if st.schedule.name == name}
            if all(now[q] > initial[q] for q in cl_queues):
                return [slot_task_id(q, name, now[q]) for q in cl_queues]
            return None

        with Client(cl_settings) as client:
            for task_id in wait_until(fired, timeout=20, interval=0.1, message="each queue's slot fired"):
                assert (client.wait(task_id, 20) or {}).get("status") == "succeeded"
        for q in cl_queues:
            store.delete(q, name)
        assert [st for st in store.load(cl_queues) if st.schedule.name == name] == []
    finally:
        store.close()


def test_the_kafka_channel_keeps_its_state_on_the_cluster(cl_settings, cl_queues, kafka, tmp_path):
    """CHANNEL=kafka with the task state (and the outbox) on the cluster: enqueue produces, a
    worker's fenced start and finish run on the cluster, the long-poll wakes."""
    settings = dataclasses.replace(cl_settings, queues=tuple(f"k{q}" for q in cl_queues[:2]),
                                   enqueue_replicas=0, **kafka_settings(kafka))  # type: ignore[arg-type]
    worker = spawn("worker", settings, tmp_path)
    try:
        with Client(settings) as client:
            done = [client.enqueue("echo", {"q": q}, queue=q) for q in settings.queues]
            assert [(client.wait(d.id, 30) or {}).get("result") for d in done] == [{"q": q} for q in settings.queues]
    finally:
        worker.kill()


def test_a_frozen_replica_makes_enqueue_replicas_answer_unavailable(valkey_cluster, cl_settings, cl_queues):
    """ENQUEUE_REPLICAS=1 with the replica of the queue's master frozen: WAIT says 0 replicas,
    so the task is not acknowledged (a failover now could lose it), rather than a silent 202."""
    keys = Keys(cl_settings.key_prefix)
    master = valkey_cluster.master_of(keys.stream(cl_queues[1]))
    replica = next(n for n in valkey_cluster.nodes if n.alive() and n is not master
                   and str(n.call("CLUSTER", "MYID")) in _replicas_of(master))
    with Client(cl_settings) as client:
        assert replica.process is not None
        replica.process.send_signal(signal.SIGSTOP)
        try:
            with pytest.raises(Unavailable, match="ENQUEUE_REPLICAS=1"):
                client.enqueue("echo", {}, queue=cl_queues[1])
            assert client.enqueue("echo", {}, queue=cl_queues[0]).status == "queued"  # other masters unaffected
        finally:
            replica.process.send_signal(signal.SIGCONT)
        wait_until(lambda: _acknowledged(client, cl_queues[1]), timeout=20, message="replica back")
    valkey_cluster.wait_healthy()


def _replicas_of(master: Any) -> set[str]:
    reply = master.call("CLUSTER", "REPLICAS", master.call("CLUSTER", "MYID"))
    lines = reply if isinstance(reply, list) else str(reply).splitlines()
    return {line.split()[0] for line in lines if line.strip()}


def _acknowledged(client: Client, queue: str) -> bool:
    try:
        return client.enqueue("echo", {}, queue=queue).status == "queued"
    except Unavailable:
        return False


def test_enqueue_replicas_on_standalone_waits_for_its_replica(tmp_path, server):
    """ENQUEUE_REPLICAS outside a cluster: a 202 once the primary's replica has the task; a
    Redis without a replica refuses (a 503), it never acknowledges what a failover could lose."""
    with primary_with_replica(tmp_path) as url:
        patient = Settings(redis_url=url, key_prefix="tbr", enqueue_replicas=1, redis_socket_timeout_s=2.0)
        with Client(patient) as client:  # WAIT may take 1.5 s on a loaded machine
            done = client.enqueue_many([{"type": "echo", "queue": f"r{i}"} for i in range(3)])
            assert [d.status for d in done] == ["queued"] * 3
    with Client(Settings(redis_url=server.url, key_prefix="tbr", enqueue_replicas=1)) as client:
        with pytest.raises(Unavailable, match="0 of ENQUEUE_REPLICAS=1 replicas"):
            client.enqueue("echo", {}, queue=f"r-{uuid.uuid4().hex[:6]}")


class Traffic:
    """HTTP enqueues in a loop on one queue, from a thread: what each answer was, and when."""

    def __init__(self, http_url: str, queue: str, key: str) -> None:
        self.url, self.queue, self.key = http_url, queue, key
        self.answers: list[tuple[float, int, str, str | None]] = []  # (time, status, task id or error, Retry-After)
        self.stop = threading.Event()

    def run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self.stop.is_set():
                body = {"type": "record", "queue": self.queue, "payload": {"key": self.key}}
                response = http.post(self.url + "/tasks", json=body)
                data = response.json()
                what = data.get("id") or data["error"]["code"]
                self.answers.append((time.monotonic(), response.status_code, what, response.headers.get("retry-after")))

    def acknowledged(self) -> list[str]:
        return [what for _, code, what, _ in self.answers if code == 202]


@pytest.mark.timeout(150)
def test_master_sigkill_while_tasks_flow(valkey_cluster, cl_settings, cl_queues, urls, http, rc):
    """SIGKILL the master of queue c while enqueues flow on b and c (ENQUEUE_REPLICAS=1), restart
    it once its replica took over (it rejoins as a replica): c answers 503 with Retry-After during
    the gap (never a 500), b keeps flowing, every acknowledged task runs and succeeds, none is
    enqueued twice, and long-polls on c work again by themselves."""
    keys = Keys(cl_settings.key_prefix)
    victim = valkey_cluster.master_of(keys.stream(cl_queues[2]))
    assert victim is not valkey_cluster.nodes[0]
    key = executions_key(cl_settings, cl_queues)
    flows = {q: Traffic(urls["enqueue"], q, key) for q in cl_queues[1:]}
    in_flight = enqueue(http, urls, cl_queues[2], "sleep", {"seconds": 20})  # its long-poll spans the kill
    reader = StatusReader(cl_settings)  # the WSGI path's reader, its slot map read before the kill
    assert (reader.wait(in_flight, 0.1) or {}).get("status") in ("queued", "running")
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        running = [pool.submit(t.run) for t in flows.values()]
        poll = pool.submit(lambda: httpx.get(f"{urls['status']}/tasks/{in_flight}", params={"wait": 25}, timeout=30))
        wait_until(lambda: all(len(t.acknowledged()) >= 20 for t in flows.values()), timeout=20, message="traffic")
        killed_at = time.monotonic()
        valkey_cluster.kill(victim)
        answered = poll.result(timeout=20)
        poll_s = time.monotonic() - killed_at
        wait_until(lambda: valkey_cluster.master_of(keys.stream(cl_queues[2])) is not victim, timeout=20,
                   message="replica promoted")
        promoted_s = time.monotonic() - killed_at
        valkey_cluster.restart(victim)
        victim_flow = flows[cl_queues[2]]
        wait_until(lambda: any(t > killed_at and c == 202 for t, c, _, _ in victim_flow.answers[-5:]), timeout=30,
                   message="queue c acknowledged again")
        recovered_s = time.monotonic() - killed_at
        for t in flows.values():
            t.stop.set()
        for f in running:
            f.result(timeout=20)
    print(f"\nfailover: long-poll answered {answered.status_code} after {poll_s:.2f} s; replica promoted after "
          f"{promoted_s:.2f} s; queue c acknowledged again after {recovered_s:.2f} s (restart + resync included)")
    assert answered.status_code in (200, 503) and poll_s < 10, "a long-poll never hangs on a dead master"
    for queue, flow in flows.items():
        codes = {c for _, c, _, _ in flow.answers}
        assert codes <= {202, 503}, (queue, codes)
        assert all(ra for _, c, _, ra in flow.answers if c == 503), "every 503 carries Retry-After"
    errors_b = [c for t, c, _, _ in flows[cl_queues[1]].answers if c != 202]
    print(f"queue c: {sum(c == 503 for _, c, _, _ in victim_flow.answers)} answers 503; "
          f"queue b (other master): {len(errors_b)} of {len(flows[cl_queues[1]].answers)} not 202")
    assert len(errors_b) <= 3, "a queue on another master keeps flowing"
    valkey_cluster.wait_healthy()
    acknowledged = [i for t in flows.values() for i in t.acknowledged()]
    wait_until(lambda: len(_runs(rc, key)) >= len(acknowledged), timeout=45, message="every acknowledged task ran")
    runs = _runs(rc, key)
    assert set(acknowledged) <= set(runs), "no acknowledged task lost"
    assert max(runs.values()) <= 2, "at-least-once, never a blind re-run"
    answered_503 = sum(c == 503 for t in flows.values() for _, c, _, _ in t.answers)
    assert len(runs) <= len(acknowledged) + answered_503, "no task enqueued twice by a retry"
    after = enqueue(http, urls, cl_queues[2], "sleep", {"seconds": 0.5})
    assert status(http, urls, after, wait=20)["status"] == "succeeded", "long-polls on queue c work again"
    later = enqueue(http, urls, cl_queues[2], "sleep", {"seconds": 0.5})
    try:  # the sync reader too: a 503 at most once (its stale map), then it follows the promoted node
        wait_until(lambda: _sync_wait(reader, later), timeout=20, message="the sync long-poll on queue c")
    finally:
        reader.close()


def _sync_wait(reader: StatusReader, task_id: str) -> bool:
    try:
        return (reader.wait(task_id, 10) or {}).get("status") == "succeeded"
    except Unavailable:
        return False


def _runs(rc: redis.RedisCluster, key: str) -> dict[str, int]:
    return {k: int(v) for k, v in rc.hgetall(key).items()}
