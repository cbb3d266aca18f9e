"""The Lua scripts, loaded with their shared prelude, and the pipelined way to run many calls."""

from __future__ import annotations

import importlib.resources
import logging
from typing import Any

import redis
from redis.commands.core import Script

from taskbus.errors import Unavailable

log = logging.getLogger(__name__)


def load_script(name: str) -> str:
    """Script `name`, after the functions every script shares (`lua/lib.lua`)."""
    lua = importlib.resources.files("taskbus.state").joinpath("lua")
    return lua.joinpath("lib.lua").read_text("utf-8") + lua.joinpath(f"{name}.lua").read_text("utf-8")


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
        self, script: Script, calls: list[tuple[list[str], list[Any]]], *, fsync: bool, wait_ms: int
    ) -> list[Any]:
        """Pipelined EVALSHA calls in one round trip. (redis-py's pipelined Script objects add a
        SCRIPT EXISTS round trip to every execute; here the script is loaded only when missing.)
        `fsync`: end the pipeline with WAITAOF, which must follow the writes on their connection,
        and return only once Redis has fsynced them to its append-only file (within `wait_ms`)."""
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            if fsync:
                pipe.execute_command("WAITAOF", 1, 0, wait_ms)  # type: ignore[no-untyped-call]
            try:
                replies = list(pipe.execute())
            except redis.exceptions.NoScriptError:
                if attempt == 2:
                    raise
                self.client.script_load(script.script)  # after a Redis restart or SCRIPT FLUSH
                continue
            except redis.ResponseError as exc:
                raise no_aof(exc) from exc
            if not fsync:
                return replies
            if replies[-1][0] < 1:  # recorded, but not known to be on disk: ambiguous, like a timeout
                raise Unavailable(f"Redis did not fsync the task within {wait_ms} ms")
            return replies[:-1]
        raise AssertionError("unreachable")

    def check_aof(self) -> None:
        """Raise unless Redis has an append-only file: a fresh connection has written nothing, so
        WAITAOF answers at once, or says AOF is off."""
        try:
            self.client.execute_command("WAITAOF", 1, 0, 1)  # type: ignore[no-untyped-call]
        except redis.ResponseError as exc:
            raise no_aof(exc) from exc


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
