"""The Lua scripts, loaded with their shared prelude, and the pipelined way to run many calls."""

from __future__ import annotations

import importlib.resources
import logging
from typing import Any

import redis
from redis.commands.core import Script

from taskbus.errors import Unavailable
from taskbus.state import cluster
from taskbus.state.client import is_cluster

log = logging.getLogger(__name__)


PRELUDE = ("lib.lua", "limits.lua")  # the functions every script shares, in this order


def load_script(name: str) -> str:
    """Script `name`, after the functions every script shares (`lua/lib.lua`, then the flow
    control's `lua/limits.lua`)."""
    lua = importlib.resources.files("taskbus.state").joinpath("lua")
    return "".join(lua.joinpath(part).read_text("utf-8") for part in (*PRELUDE, f"{name}.lua"))


class Scripts:
    """The Lua scripts registered on one client (EVALSHA with automatic fallback to EVAL).
    Each script's header states its KEYS, ARGV and reply."""

    NAMES = (
        *("enqueue", "start", "finish", "heartbeat", "read_due", "promote", "dead_letter_malformed", "announce"),
        *("kafka_start", "kafka_lease", "kafka_republish", "kafka_undo", "kafka_mark_published"),
        *("cancel", "requeue", "purge_queued", "redrive_claim", "redrive_step", "redrive_cancel"),
        *("schedule_upsert", "schedule_fire", "schedule_pause"),
        *("take", "levels"),
    )
    enqueue: Script
    start: Script
    finish: Script
    heartbeat: Script
    read_due: Script
    promote: Script
    dead_letter_malformed: Script
    announce: Script
    kafka_start: Script
    kafka_lease: Script
    kafka_republish: Script
    kafka_undo: Script
    kafka_mark_published: Script
    cancel: Script
    requeue: Script
    purge_queued: Script
    redrive_claim: Script
    redrive_step: Script
    redrive_cancel: Script
    schedule_upsert: Script
    schedule_fire: Script
    schedule_pause: Script
    take: Script
    levels: Script

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        for name in self.NAMES:
            setattr(self, name, client.register_script(load_script(name)))

    def run_many(
        self, script: Script, calls: list[tuple[list[str], list[Any]]], *, fsync: bool, wait_ms: int,
        replicas: int = 0,
    ) -> list[Any]:
        """Pipelined EVALSHA calls in one round trip. (redis-py's pipelined Script objects add a
        SCRIPT EXISTS round trip to every execute; here the script is loaded only when missing.)
        `fsync`: end the pipeline with WAITAOF, which must follow the writes on their connection,
        and return only once Redis has fsynced them to its append-only file (within `wait_ms`).
        `replicas`: likewise WAIT until that many replicas have the writes (ENQUEUE_REPLICAS).
        On a cluster, one pipeline per node, each with its own WAITAOF/WAIT (`state.cluster`)."""
        tail: list[tuple[Any, ...]] = [("WAITAOF", 1, 0, wait_ms)] if fsync else []
        tail += [("WAIT", replicas, wait_ms)] if replicas else []
        if is_cluster(self.client):
            try:
                replies, tails = cluster.run_many(self.client, script.sha, str(script.script), calls, tail)
            except redis.ResponseError as exc:
                raise no_aof(exc) from exc
            _check_waits(tails, fsync, replicas, wait_ms)
            return replies
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            for command in tail:
                pipe.execute_command(*command)  # type: ignore[no-untyped-call]
            try:
                replies = list(pipe.execute())
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                self.client.script_load(script.script)  # after a Redis restart or SCRIPT FLUSH
                continue
            except redis.ResponseError as exc:
                raise no_aof(exc) from exc
            _check_waits(replies[len(calls):], fsync, replicas, wait_ms)
            return replies[:len(calls)]
        raise AssertionError("unreachable")

    def check_aof(self) -> None:
        """Raise unless Redis has an append-only file: a fresh connection has written nothing, so
        WAITAOF answers at once, or says AOF is off."""
        where = {"target_nodes": "primaries"} if is_cluster(self.client) else {}  # every master's AOF
        try:
            self.client.execute_command("WAITAOF", 1, 0, 1, **where)  # type: ignore[no-untyped-call]
        except redis.ResponseError as exc:
            raise no_aof(exc) from exc


def _check_waits(tails: list[Any], fsync: bool, replicas: int, wait_ms: int) -> None:
    """Recorded, but not known to be on disk (WAITAOF) or on enough replicas (WAIT): ambiguous,
    like a timeout, so a 503."""
    for reply in tails:
        if isinstance(reply, list) and fsync and int(reply[0]) < 1:
            raise Unavailable(f"Redis did not fsync the task within {wait_ms} ms")
        if not isinstance(reply, list) and int(reply) < replicas:
            raise Unavailable(f"{reply} of ENQUEUE_REPLICAS={replicas} replicas acknowledged the task "
                              f"within {wait_ms} ms")


def no_aof(exc: redis.ResponseError) -> Exception:
    """WAITAOF's refusal on a Redis without an append-only file, or one older than 7.2 that has
    no WAITAOF: a deployment error, said loudly (a 503, never a 500)."""
    text = str(exc).lower()
    if "unknown command" in text and "waitaof" in text:
        log.error("ENQUEUE_FSYNC is set but this Redis has no WAITAOF (Redis 7.2+ or Valkey needed)")
        return Unavailable("ENQUEUE_FSYNC is set but Redis has no WAITAOF (before 7.2)")
    if "appendonly" not in text:
        return exc
    log.error("ENQUEUE_FSYNC is set but Redis runs without appendonly: every enqueue is refused")
    return Unavailable("ENQUEUE_FSYNC is set but Redis has no append-only file")
