"""`make up` with LOCAL_CLUSTER=true: an embedded 3 + 3 Redis Cluster on LOCAL_REDIS_PORT and the
five ports after it (their bus ports 10000 above); a task runs on it; Ctrl-C stops every node.
(A second start finds the cluster formed from each node's nodes.conf: `local.cluster.form`.)"""

from __future__ import annotations

import random
import socket
from pathlib import Path

import httpx
import pytest
import redis

from tests.e2e.test_local_stack import Stack, _env


def _free_block(count: int) -> int:
    """A port below the ephemeral range with `count` free ports from it and 10000 above each."""
    for _ in range(200):
        base = random.randint(20000, 22000 - count)
        try:
            for port in [p for i in range(count) for p in (base + i, base + i + 10000)]:
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no free block of ports")


@pytest.mark.timeout(120)
def test_make_up_runs_on_an_embedded_cluster(tmp_path: Path) -> None:
    base = _free_block(6)
    env = _env(tmp_path, LOCAL_CLUSTER="true", LOCAL_REDIS_PORT=str(base))
    stack = Stack(env, tmp_path / "up.log")
    try:
        assert stack.redis_url == f"redis://127.0.0.1:{base}/0"
        nodes = redis.RedisCluster(host="127.0.0.1", port=base, decode_responses=True)
        assert len(nodes.get_primaries()) == 3 and len(nodes.get_replicas()) == 3
        nodes.close()
        with httpx.Client(timeout=30) as http:
            reply = http.post(stack.enqueue + "/tasks", json={"type": "echo", "payload": {"on": "cluster"}})
            assert reply.status_code == 202, reply.text
            done = http.get(stack.status + f"/tasks/{reply.json()['id']}", params={"wait": 10}).json()
            assert (done["status"], done["result"]) == ("succeeded", {"on": "cluster"})
        assert stack.ctrl_c() == 0, stack.proc.tail(40)
        for port in range(base, base + 6):
            with pytest.raises(redis.ConnectionError):
                redis.Redis(port=port, socket_connect_timeout=1).ping()
    finally:
        stack.proc.kill()
