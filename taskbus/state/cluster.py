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
import logging
from collections.abc import Iterator
from typing import Any

import redis
import redis.exceptions as rex

log = logging.getLogger(__name__)

Call = tuple[list[str], list[Any]]  # KEYS and ARGV of one script call
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
    connection. Returns the calls' replies in order, and every tail reply of every node."""
    by_node: dict[str, tuple[redis.Redis, list[int]]] = {}
    for index, (keys, _) in enumerate(calls):
        node = client.get_node_from_key(keys[0])
        by_node.setdefault(node.name, (node.redis_connection, []))[1].append(index)
    replies: list[Any] = [None] * len(calls)
    tails: list[Any] = []
    with refreshing(client):
        for node_redis, indexes in by_node.values():
            ran = _run_on_node(node_redis, sha, script, [calls[i] for i in indexes], tail, tails)
            for index, reply in zip(indexes, ran):
                replies[index] = reply
    return replies, tails


def _run_on_node(node: redis.Redis, sha: str, script: str, calls: list[Call], tail: list[tuple[Any, ...]],
                 tails: list[Any]) -> list[Any]:
    """One node's calls in one pipeline. A call the node answers NOSCRIPT (a replica promoted
    since the script was loaded: scripts are not replicated) did not run; the script is loaded on
    this node and only those calls run again, so none is applied twice. The tail replies of both
    rounds go to `tails`: each covers the writes of its own round's connection."""
    todo = list(range(len(calls)))
    replies: list[Any] = [None] * len(calls)
    for attempt in (1, 2):
        pipe = node.pipeline(transaction=False)
        for i in todo:
            keys, args = calls[i]
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)  # type: ignore[no-untyped-call]
        for command in tail:
            pipe.execute_command(*command)  # type: ignore[no-untyped-call]
        got = pipe.execute(raise_on_error=False)
        missing = [i for i, reply in zip(todo, got) if isinstance(reply, rex.NoScriptError)]
        for i, reply in zip(todo, got):
            replies[i] = reply
        tails.extend(got[len(todo):])
        if not missing or attempt == 2:
            break
        node.script_load(script)
        todo = missing
    for reply in [*replies, *tails]:
        if isinstance(reply, Exception):
            raise reply
    return replies


def mget(client: Any, keys: list[str]) -> list[Any]:
    """MGET of keys in many slots: one GET per key (grouped per node by redis-py)."""
    return list(client.mget_nonatomic(keys))
