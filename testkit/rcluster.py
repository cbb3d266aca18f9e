"""A real Redis Cluster for tests, chaos and bench (`local.cluster.EmbeddedCluster`: 3 masters +
3 replicas of the embedded Valkey on bind-tested ports, ready in about 3 s), with what tests do
to it: find a slot's master, SIGKILL a node and restart it, freeze a replica; queue names that
land on different masters; a standalone primary with a replica for `WAIT`."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import redis
from redis.crc import key_slot

from local.cluster import SLOTS, EmbeddedCluster, Node, slots_of
from local.embedded import EmbeddedServer, spawn_logged
from testkit.procs import wait_until

__all__ = ["Node", "ValkeyCluster", "primary_with_replica", "queues_on_masters"]


class ValkeyCluster(EmbeddedCluster):
    def master_of(self, key: str) -> Node:
        """The node that serves `key`'s slot now."""
        slot = key_slot(key.encode())
        for node in self.nodes:
            if not node.alive():
                continue
            with contextlib.suppress(redis.RedisError):
                for low, high, primary, *_ in slots_of(node):
                    if low <= slot <= high:
                        return next(n for n in self.nodes if n.port == int(primary[1]))
        raise AssertionError(f"no live node serves slot {slot}")

    def kill(self, node: Node) -> None:
        """SIGKILL one node by its pid."""
        assert node.process is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(10)

    def replica_of(self, master: Node) -> Node:
        """A live replica of `master` (CLUSTER REPLICAS)."""
        reply = master.call("CLUSTER", "REPLICAS", master.call("CLUSTER", "MYID"))
        ids = {line.split()[0] for line in (reply if isinstance(reply, list) else str(reply).splitlines()) if line}
        return next(n for n in self.nodes if n is not master and n.alive() and str(n.call("CLUSTER", "MYID")) in ids)

    def freeze(self, node: Node, frozen: bool = True) -> None:
        """SIGSTOP a node (it keeps its connections and reads nothing: a lagging replica), or
        SIGCONT it again."""
        assert node.process is not None
        node.process.send_signal(signal.SIGSTOP if frozen else signal.SIGCONT)

    def restart(self, node: Node) -> None:
        """Start a killed node again with its own argv: it rejoins as a replica of its promoted one."""
        node.start()
        wait_until(node.answers, timeout=20, message=f"valkey node {node.port} back")


def queues_on_masters(prefix: str, tag: str, masters: int = 3) -> list[str]:
    """One queue name per master's slot range of a fresh cluster (`<prefix>-<tag>-<n>`), for
    tests that span masters. The slot depends only on the queue name (its keys' hash tag)."""
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
