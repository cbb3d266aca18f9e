"""What a Redis Cluster client must do differently, kept apart from the standalone paths.

Measured on redis-py 8.1 (docs: README "Redis Cluster"): its cluster pipeline refuses
`evalsha`; after a connection error it re-sends commands one at a time (an enqueue applied twice
when a reply was lost) and on other connections (so a WAIT/WAITAOF after them covers nothing); it
sends WAIT/WAITAOF to its default node, not to the node that took the writes; and a client used
only for routing or pub/sub keeps a dead node's slots until something refreshes its map. So each
node's calls go here on a plain pipeline of that node's own client: one connection per node
carries the writes and the WAIT that follows them, and an error is never retried blindly.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import redis
import redis.exceptions as rex

Call = tuple[list[str], list[Any]]  # KEYS and ARGV of one script call
# CLUSTERDOWN lasts from a master's FAIL to its replica's promotion (40-60 ms measured); redis-py
# pauses 0.25 s before it retries a command refused so.
CLUSTER_DOWN_PAUSE_S = 0.25
# Replies after which a call did not run: it is sent again (to the new owner, after a pause, or
# once its script is loaded).
_NOT_RUN = (rex.NoScriptError, rex.MovedError, rex.AskError, rex.ClusterDownError, rex.TryAgainError)
# A reply that says the node no longer owns the slot, or the cluster is mid-failover.
_MOVED = (rex.MovedError, rex.AskError, rex.ClusterDownError, rex.TryAgainError, rex.MasterDownError)


def node_client(client: Any, key: str) -> redis.Redis:
    """The standalone client of the master that owns `key`'s slot (its pool is the cluster's)."""
    return client.get_node_from_key(key).redis_connection  # type: ignore[no-any-return]


def refresh(client: Any) -> None:
    """Re-read the slot map (after a connection error or MOVED: a failover may have promoted a
    replica); an unreachable cluster keeps the old map, and the next call fails and tries again."""
    with contextlib.suppress(Exception):
        client.nodes_manager.initialize()


@contextlib.contextmanager
def refreshing(client: Any) -> Iterator[None]:
    """Refresh `client`'s slot map when the block fails with a connection or cluster error."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError, *_MOVED):
        refresh(client)
        raise


def run_many(client: Any, sha: str, script: str, calls: list[Call],
             tail: list[tuple[Any, ...]]) -> tuple[list[Any], list[Any]]:
    """Each call of `script` (all keys of a call in one slot), grouped by the node that owns it,
    one pipeline per node, each followed by the `tail` commands (WAITAOF, WAIT) on that node's
    connection. Returns the calls' replies in order, and every tail reply of every node.

    A call answered NOSCRIPT (a replica promoted since the script was loaded: scripts are not
    replicated), MOVED (the slot has a new owner) or CLUSTERDOWN/TRYAGAIN (refused while
    a failover completes) did not run: only those calls run again, after loading the script on
    that node, taking the new owner from the redirect or a pause, so none is applied twice."""
    replies: list[Any] = [None] * len(calls)
    tails: list[Any] = []
    todo = list(range(len(calls)))
    with refreshing(client):
        for _ in range(3):
            by_node: dict[str, tuple[redis.Redis, list[int]]] = {}
            for index in todo:
                node = client.get_node_from_key(calls[index][0][0])
                by_node.setdefault(node.name, (node.redis_connection, []))[1].append(index)
            todo = []
            for node_redis, indexes in by_node.values():
                got = _pipeline(node_redis, sha, [calls[i] for i in indexes], tail)
                if not all(isinstance(reply, _NOT_RUN) for reply in got[:len(indexes)]):
                    tails.extend(got[len(indexes):])  # else this node took none: its WAIT says nothing
                for index, reply in zip(indexes, got):
                    replies[index] = reply
                    if isinstance(reply, rex.NoScriptError):
                        node_redis.script_load(script)
                    elif isinstance(reply, rex.MovedError):  # (an ASK, mid-resharding, is a 503)
                        client.nodes_manager.move_slot(reply)
                    elif not isinstance(reply, (rex.ClusterDownError, rex.TryAgainError)):
                        continue
                    todo.append(index)
            if not todo:
                break
            if any(isinstance(replies[i], (rex.ClusterDownError, rex.TryAgainError)) for i in todo):
                time.sleep(CLUSTER_DOWN_PAUSE_S)
        for reply in [*replies, *tails]:
            if isinstance(reply, Exception):
                raise reply
    return replies, tails


def _pipeline(node: redis.Redis, sha: str, calls: list[Call], tail: list[tuple[Any, ...]]) -> list[Any]:
    """One node's calls and tail in one round trip on one connection; errors as values."""
    pipe = node.pipeline(transaction=False)
    for keys, args in calls:
        pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
    for command in tail:
        pipe.execute_command(*command)  # type: ignore[no-untyped-call]
    return list(pipe.execute(raise_on_error=False))


def mget(client: Any, keys: list[str]) -> list[Any]:
    """MGET of keys in many slots: one GET per key (grouped per node by redis-py)."""
    return list(client.mget_nonatomic(keys))
