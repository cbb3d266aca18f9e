"""`Admin`: the operators' operations over the task state (see the package docstring for the
shapes every method returns). Reads cost a bounded number of commands per queue or per page;
writes are the fenced scripts of `taskbus/state/lua/` (cancel, requeue, purge_queued)."""

from __future__ import annotations

import logging
from typing import Any

import redis

from taskbus import codec
from taskbus.admin import stats
from taskbus.admin.rows import as_int, as_json, detail, row, workers_of
from taskbus.channel.levels import entry_name, split_entry
from taskbus.errors import Conflict, NotFound, ValidationError
from taskbus.keys import Keys
from taskbus.redact import redact
from taskbus.settings import Settings
from taskbus.state.client import connect, unavailable_on_redis_errors
from taskbus.state.scripts import Scripts
from taskbus.task import DEFAULT_PRIORITY, PRIORITIES, check_name, iso, queue_of

log = logging.getLogger(__name__)

STATES = ("queued", "scheduled", "throttled", "running", "dead", "finished")
PURGEABLE = ("queued", "dead")
MAX_PAGE = 200
PURGE_CHUNK = 500
Page = tuple[list[dict[str, Any]], str | None]  # rows, next cursor
ROW_FIELDS = ("id", "type", "queue", "status", "attempts", "max_attempts", "created_ms", "started_ms",
              "finished_ms", "error", "consumer", "cancel_requested_ms")


class Admin:
    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.client = client or connect(settings)
        self.scripts = Scripts(self.client)
        self.kafka = settings.channel == "kafka"
        self.live_ms = int(settings.lease_s * 2000)  # as the start scripts count a worker live

    # -- queues -----------------------------------------------------------------------------

    def queues(self) -> list[str]:
        with unavailable_on_redis_errors():
            known: Any = self.client.smembers(self.keys.queue_index())
        return sorted(set(known) | set(self.settings.queues))

    def note_queue(self, queue: str) -> None:
        with unavailable_on_redis_errors():
            self.client.sadd(self.keys.queue_index(), check_name("queue", queue))

    def overview(self, queue: str) -> dict[str, Any]:
        return self._overviews([check_name("queue", queue)])[0]

    def overviews(self) -> list[dict[str, Any]]:
        return self._overviews(self.queues())

    def _overviews(self, queues: list[str]) -> list[dict[str, Any]]:
        """Three pipelined round trips for any number of queues, a handful of O(1)/O(log n)
        commands per queue in each: counts, then the oldest queued and running entries, then
        when the oldest running task started (and, between the first two, the counts of the
        priority level streams of the queues that have some in use)."""
        with unavailable_on_redis_errors():
            first = self._pipeline(lambda p, q: stats.first_round(p, self.keys, self.settings, q), queues)
            now_ms = stats.server_ms(self.client)
            heads = [stats.Head.of(reply, self.settings) for reply in first]
            with_levels = [(q, h) for q, h in zip(queues, heads) if h.levels]
            if with_levels:  # only while some queue has priorities in use: one more round trip
                add = dict(with_levels)
                levels = self._pipeline(lambda p, q: stats.level_round(p, self.keys, self.settings, q, add[q].levels),
                                        [q for q, _ in with_levels])
                for (_, head), reply in zip(with_levels, levels):
                    head.take_levels(reply, self.settings)
            second = self._pipeline(lambda p, q: heads[queues.index(q)].second_round(p, self.keys, q), queues)
            for head, reply in zip(heads, second):
                head.take_second(reply)
            third = self._pipeline(lambda p, q: heads[queues.index(q)].third_round(p, self.keys), queues)
            for head, reply in zip(heads, third):
                head.take_third(reply)
        return [head.overview(q, now_ms, self.settings, self.live_ms, self.kafka) for q, head in zip(queues, heads)]

    def _pipeline(self, add: Any, queues: list[str]) -> list[list[Any]]:
        """Per queue, the replies of the commands `add(pipe, queue)` queued (errors as values)."""
        pipe = self.client.pipeline(transaction=False)
        counts = []
        for q in queues:
            before = len(pipe)  # len(), not command_stack: a cluster pipeline queues elsewhere
            add(pipe, q)
            counts.append(len(pipe) - before)
        replies = pipe.execute(raise_on_error=False) if len(pipe) else []
        out, at = [], 0
        for n in counts:
            out.append(list(replies[at:at + n]))
            at += n
        for reply in replies:
            if isinstance(reply, (redis.ConnectionError, redis.TimeoutError)):
                raise reply
        return out

    # -- listings ---------------------------------------------------------------------------

    def tasks(self, queue: str, state: str, cursor: str | None = None, limit: int = 50) -> dict[str, Any]:
        check_name("queue", queue)
        if state not in STATES:
            raise ValidationError("state", f"must be one of {', '.join(STATES)}")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
            raise ValidationError("limit", f"must be an integer from 1 to {MAX_PAGE}")
        with unavailable_on_redis_errors():
            rows, next_cursor = getattr(self, f"_list_{state}")(queue, cursor, limit)
        return {"tasks": rows, "next_cursor": next_cursor}

    def _list_queued(self, queue: str, cursor: str | None, limit: int) -> Page:
        if self.kafka:  # recorded and not yet started: the outbox, by when each was recorded
            return self._list_zset(self.keys.outbox(queue), cursor, limit, "queued_since")
        at, after = _level_cursor(cursor) if cursor else (9, "")
        rows: list[dict[str, Any]] = []
        for level in self._levels(queue):  # highest first, as workers take them (within their deadlines)
            stream = self.keys.level_stream(queue, level)
            if level > at:
                continue
            start = f"({after}" if after and level == at else self._first_undelivered(stream)
            entries: Any = self.client.xrange(stream, start, "+", count=limit - len(rows))
            found = self._rows([fields.get("id", "") for _, fields in entries])
            rows += [{**r, "entry": entry_name(level, e), "priority": level} for r, (e, _) in zip(found, entries)]
            if len(rows) == limit:
                return rows, rows[-1]["entry"]
        return rows, None

    def _levels(self, queue: str) -> list[int]:
        """The queue's priority levels in use and the default, highest first (channel/levels.py)."""
        levels: Any = self.client.smembers(self.keys.levels(queue))
        return sorted({DEFAULT_PRIORITY, *(int(n) for n in levels if n.isdigit() and int(n) in PRIORITIES)},
                      reverse=True)

    def _first_undelivered(self, stream: str) -> str:
        """`(last-delivered-id` of the queue's group on `stream`: what follows is queued, not yet read."""
        try:
            groups: Any = self.client.xinfo_groups(stream)
        except redis.ResponseError:  # no stream yet
            return "-"
        group = next((g for g in groups if g["name"] == self.settings.consumer_group), None)
        return f"({group['last-delivered-id']}" if group else "-"

    def _list_scheduled(self, queue: str, cursor: str | None, limit: int) -> Page:
        return self._list_zset(self.keys.delayed(queue), cursor, limit, "due_at")

    def _list_zset(self, key: str, cursor: str | None, limit: int, field: str) -> Page:
        offset = _offset_cursor(cursor)
        members: Any = self.client.zrange(key, offset, offset + limit - 1, withscores=True)
        found = self._rows([m for m, _ in members])
        rows = [{**r, field: iso(str(int(score)))} for r, (_, score) in zip(found, members)]
        return rows, str(offset + limit) if len(members) == limit else None

    def _list_throttled(self, queue: str, cursor: str | None, limit: int) -> Page:
        """The tasks waiting for a concurrency slot: by limit key, each key's in its FIFO order."""
        offset = _offset_cursor(cursor)
        members: Any = self.client.zrange(self.keys.throttled(queue), offset, offset + limit - 1)
        waiting = [m.split("\0") for m in members]  # type, key, order, task id
        rows = [{**r, "limit_key": w[1] if len(w) == 4 else None}
                for r, w in zip(self._rows([w[-1] for w in waiting]), waiting)]
        return rows, str(offset + limit) if len(members) == limit else None

    def _list_running(self, queue: str, cursor: str | None, limit: int) -> Page:
        if self.kafka:  # Kafka has no pending list to page through
            return [], None
        at, after = _level_cursor(cursor) if cursor else (9, "")
        rows: list[dict[str, Any]] = []
        for level in self._levels(queue):  # as the queued listing: highest level first
            if level <= at:
                rows += self._running_rows(queue, level, f"({after}" if after and level == at else "-",
                                           limit - len(rows))
            if len(rows) == limit:
                return rows, rows[-1]["entry"]
        return rows, None

    def _running_rows(self, queue: str, level: int, start: str, limit: int) -> list[dict[str, Any]]:
        stream = self.keys.level_stream(queue, level)
        try:
            pending: Any = self.client.xpending_range(stream, self.settings.consumer_group, start, "+", limit)
        except redis.ResponseError:  # no group yet
            return []
        pipe = self.client.pipeline(transaction=False)
        for p in pending:
            pipe.xrange(stream, p["message_id"], p["message_id"])
        found = pipe.execute()
        ids = [entries[0][1].get("id", "") if entries else "" for entries in found]
        return [
            {**r, "entry": entry_name(level, p["message_id"]), "priority": level, "worker": p["consumer"],
             "idle_s": p["time_since_delivered"] / 1000}
            for r, p in zip(self._rows(ids), pending)
        ]

    def _list_dead(self, queue: str, cursor: str | None, limit: int) -> Page:
        end = f"({_entry_cursor(cursor)}" if cursor else "+"
        entries: Any = self.client.xrevrange(self.keys.dead(queue), end, "-", count=limit)
        current = self._rows([fields.get("id", "") for _, fields in entries])
        rows = []
        for (entry, fields), now in zip(entries, current):
            rows.append({
                **now, "id": fields.get("id", ""), "type": fields.get("type") or now.get("type"),
                "queue": queue, "status": now.get("status") or "failed",
                "attempts": as_int(fields.get("attempts")), "error": as_json(fields.get("error")),
                "entry": entry, "dead_at": iso(entry.split("-")[0]),
            })
        return rows, entries[-1][0] if len(entries) == limit else None

    def _list_finished(self, queue: str, cursor: str | None, limit: int) -> Page:
        end = f"({_entry_cursor(cursor)}" if cursor else "+"
        entries: Any = self.client.xrevrange(self.keys.recent(queue), end, "-", count=limit)
        current = self._rows([fields.get("id", "") for _, fields in entries])
        rows = [{"status": fields.get("status"), **now, "id": fields.get("id", ""), "entry": entry}
                for (entry, fields), now in zip(entries, current)]
        return rows, entries[-1][0] if len(entries) == limit else None

    def _rows(self, ids: list[str]) -> list[dict[str, Any]]:
        """One pipelined HMGET per task: the page's rows (only the fields a list shows)."""
        pipe = self.client.pipeline(transaction=False)
        for task_id in ids:
            if queue_of(task_id):
                pipe.hmget(self.keys.task(task_id), ROW_FIELDS)
        replies = iter(pipe.execute())
        rows = []
        for task_id in ids:
            values = next(replies) if queue_of(task_id) else [None] * len(ROW_FIELDS)
            record = {k: v for k, v in zip(ROW_FIELDS, values) if v is not None}
            rows.append(row(record) if record else {"id": task_id})
        return rows

    # -- one task ---------------------------------------------------------------------------

    def task(self, task_id: str) -> dict[str, Any] | None:
        """The task's detail, its payload with the CONSOLE_REDACT fields masked (every surface
        that shows it to people comes here)."""
        if queue_of(task_id) is None:
            return None
        with unavailable_on_redis_errors():
            record: Any = self.client.hgetall(self.keys.task(task_id))
        if not record:
            return None
        shown = detail(record)
        if self.settings.console_redact:
            shown["payload"] = redact(shown["payload"], self.settings.console_redact)
        return shown

    def cancel(self, task_id: str, actor: str) -> tuple[str, dict[str, Any]]:
        queue = self._queue_of(task_id)
        keys = [self.keys.task(task_id), self.keys.events(task_id), self.keys.delayed(queue), self.keys.outbox(queue),
                self.keys.stats(queue), self.keys.recent(queue), self.keys.cancels(queue), *self.keys.limits(queue),
                self.keys.stream(queue)]
        args: list[Any] = [task_id, actor, self.settings.result_ttl_s, self.settings.recent_max,
                           "delayed" if self.kafka else "stream"]
        with unavailable_on_redis_errors():
            reply: Any = self.scripts.cancel(keys=keys, args=args, client=self.client)
        self._refuse(task_id, reply, "cancel")
        log.info("task cancel", extra={"fields": {"task_id": task_id, "actor": actor, "outcome": reply[0]}})
        return reply[0], self._view(task_id)

    def retry(self, task_id: str, actor: str) -> dict[str, Any]:
        queue = self._queue_of(task_id)
        target = self.keys.outbox(queue) if self.kafka else self.keys.stream(queue)
        keys = [self.keys.task(task_id), target, self.keys.delayed(queue), self.keys.dead(queue)]
        args: list[Any] = [task_id, actor, "outbox" if self.kafka else "stream", self.settings.pending_ttl_s]
        with unavailable_on_redis_errors():
            reply: Any = self.scripts.requeue(keys=keys, args=args, client=self.client)
        self._refuse(task_id, reply, "retry")
        log.info("task retry", extra={"fields": {"task_id": task_id, "actor": actor}})
        return self._view(task_id)

    def _queue_of(self, task_id: str) -> str:
        queue = queue_of(task_id)
        if queue is None:
            raise NotFound(f"no task with id {task_id[:200]!r}")
        return queue

    def _refuse(self, task_id: str, reply: list[Any], action: str) -> None:
        if reply[0] == "missing":
            raise NotFound(f"no task with id {task_id[:200]!r}")
        if reply[0] in ("terminal", "conflict"):
            verb = "finished" if reply[0] == "terminal" else "is"
            raise Conflict(f"cannot {action} the task: it {verb} {reply[1]}", reply[1])

    def _view(self, task_id: str) -> dict[str, Any]:
        found = self.task(task_id)
        if found is None:
            raise NotFound(f"no task with id {task_id[:200]!r}")
        return found

    # -- queues: pause, purge -------------------------------------------------------------------

    def pause(self, queue: str, actor: str) -> dict[str, Any]:
        check_name("queue", queue)
        with unavailable_on_redis_errors():
            now_ms = stats.server_ms(self.client)
            self.client.set(self.keys.paused(queue), codec.dumps({"by": actor, "at_ms": now_ms}))
            self.client.sadd(self.keys.queue_index(), queue)
        log.info("queue paused", extra={"fields": {"queue": queue, "actor": actor}})
        return self.overview(queue)

    def resume(self, queue: str, actor: str) -> dict[str, Any]:
        check_name("queue", queue)
        with unavailable_on_redis_errors():
            self.client.delete(self.keys.paused(queue))
        log.info("queue resumed", extra={"fields": {"queue": queue, "actor": actor}})
        return self.overview(queue)

    def purge(self, queue: str, state: str, actor: str) -> int:
        check_name("queue", queue)
        if state not in PURGEABLE:
            raise ValidationError("state", f"must be one of {', '.join(PURGEABLE)}")
        with unavailable_on_redis_errors():
            if state == "dead":
                pipe = self.client.pipeline(transaction=True)
                pipe.xlen(self.keys.dead(queue))
                pipe.delete(self.keys.dead(queue))
                n = int(pipe.execute()[0])
            else:
                n = self._purge_queued(queue, actor)
        log.warning("queue purged", extra={"fields": {"queue": queue, "state": state, "actor": actor, "tasks": n}})
        return n

    def _purge_queued(self, queue: str, actor: str) -> int:
        """Every entry queued when the purge began, in chunks (tasks enqueued meanwhile stay)."""
        if self.kafka:
            raise ValidationError("state", "purging queued tasks needs CHANNEL=redis (Kafka records cannot be deleted)")
        return sum(self._purge_stream(queue, self.keys.level_stream(queue, level), actor)
                   for level in self._levels(queue))

    def _purge_stream(self, queue: str, stream: str, actor: str) -> int:
        last: Any = self.client.xrevrange(stream, "+", "-", count=1)
        if not last:
            return 0
        stop, start, total = last[0][0], self._first_undelivered(stream), 0
        while True:
            entries: Any = self.client.xrange(stream, start, stop, count=PURGE_CHUNK)
            entries = [(e, f.get("id", "")) for e, f in entries]
            if not entries:
                return total
            keys = [stream, self.keys.stats(queue), self.keys.recent(queue), self.keys.cancels(queue),
                    *self.keys.limits(queue)]
            args: list[Any] = [actor, self.settings.result_ttl_s, self.settings.recent_max]
            for entry, task_id in entries:
                ok = queue_of(task_id) == queue
                keys += [self.keys.task(task_id) if ok else stream, self.keys.events(task_id) if ok else stream]
                args += [entry, task_id]
            total += int(self.scripts.purge_queued(keys=keys, args=args, client=self.client))
            start = f"({entries[-1][0]}"

    # -- workers ----------------------------------------------------------------------------------

    def workers(self, queue: str | None = None) -> list[dict[str, Any]]:
        queues = [check_name("queue", queue)] if queue else self.queues()
        with unavailable_on_redis_errors():
            pipe = self.client.pipeline(transaction=False)
            for q in queues:
                pipe.hgetall(self.keys.workers(q))
            hashes = pipe.execute()
            now_ms = stats.server_ms(self.client)
        return workers_of(hashes, now_ms - self.live_ms)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Admin:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _level_cursor(cursor: str) -> tuple[int, str]:
    """A queued listing's cursor: an entry of the default level, or `<entry>@<level>`, checked."""
    entry, sep, level = cursor.partition("@")
    _entry_cursor(entry)
    if sep and not (level.isdigit() and int(level) in PRIORITIES):
        raise ValidationError("cursor", "is not a cursor this listing returned")
    return split_entry(cursor)


def _entry_cursor(cursor: str) -> str:
    """A stream-id cursor, checked: raw input never reaches a command unvalidated."""
    ms, _, seq = cursor.partition("-")
    if not (ms.isdigit() and seq.isdigit() and len(cursor) <= 41):
        raise ValidationError("cursor", "is not a cursor this listing returned")
    return cursor


def _offset_cursor(cursor: str | None) -> int:
    if cursor is None:
        return 0
    if not cursor.isdigit() or len(cursor) > 12:
        raise ValidationError("cursor", "is not a cursor this listing returned")
    return int(cursor)

