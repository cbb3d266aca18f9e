"""Re-drives of dead letters as durable jobs: filtered, paced, cancellable, resumable.

A re-drive is a hash under its queue's hash tag (id `<queue>~<32 hex>`, like a task id). Whoever
runs it holds a lease in that hash; each step moves a few dead letters back to `queued` and
advances the job's cursor in one fenced script (lua/redrive_step.lua), so a step lands once or
not at all: killing the process that runs it loses nothing and moves nothing twice, and any
other runner (a worker, a console instance, the `taskbus redrive` command) continues it once
the lease expires. It covers the dead letters that existed when it was created (up to the
stream's last entry then): a task that fails again after its re-drive is not re-driven again.

    Redrives(settings)
      .create(queue, *, actor, error_type=None, task_type=None, since_ms=None, until_ms=None,
              rate=None, dry_run=False) -> dict
          dry run: {"dry_run": True, "matched": n}; else the job (below), state "running"
      .get(redrive_id) -> dict | None
      .list(queue, limit=50) -> list[dict]         newest first
      .cancel(redrive_id, actor) -> dict            Conflict if it already ended
      .run(redrive_id, stop, on_progress=None) -> dict   run it here until it ends or `stop` is set
    job = {id, queue, state (running | done | cancelled), filters: {error_type, task_type, since, until},
           rate, total, moved, skipped, scanned, created_at, created_by, finished_at, cancelled_by, owner}
    RedriveRunner(settings, queues).start() / .stop(): a thread that continues the running
           re-drives of these queues (workers and console instances run one)
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis

from taskbus import codec
from taskbus.admin.stats import server_ms
from taskbus.errors import Conflict, NotFound, Unavailable, ValidationError
from taskbus.keys import Keys
from taskbus.settings import Settings
from taskbus.state.client import connect, unavailable_on_redis_errors
from taskbus.state.scripts import Scripts
from taskbus.task import check_name, iso, new_id, queue_of
from taskbus.telemetry import tracing

log = logging.getLogger(__name__)

LEASE_MS = 5_000  # a runner that stops renewing for this long is presumed dead; another takes over
STEP_S = 0.1  # the pace's granularity: each step moves what the rate allows since the last
MAX_STEP = 200  # dead letters moved by one step at most
SCAN_PAGE = 500  # dead letters read per page while looking for matches
FOLLOW_S = 1.0  # how often a runner looks for re-drives to continue
MAX_RATE = 10_000.0

Progress = Callable[[dict[str, Any]], None]
Batch = list[tuple[str, dict[str, str]]]  # dead letters: (entry id, fields)
Ids = list[str]
Args = list[Any]


@dataclasses.dataclass(frozen=True)
class Filters:
    error_type: str | None = None
    task_type: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None

    def match(self, entry: str, fields: dict[str, str]) -> bool:
        at = int(entry.split("-")[0])
        if self.since_ms is not None and at < self.since_ms or self.until_ms is not None and at > self.until_ms:
            return False
        if self.task_type is not None and fields.get("type") != self.task_type:
            return False
        if self.error_type is not None:
            try:
                error = codec.loads(fields.get("error") or "null")
            except ValueError:
                return False
            return isinstance(error, dict) and error.get("type") == self.error_type
        return True

    def shown(self) -> dict[str, Any]:
        return {"error_type": self.error_type, "task_type": self.task_type,
                "since": iso(str(self.since_ms)) if self.since_ms is not None else None,
                "until": iso(str(self.until_ms)) if self.until_ms is not None else None}


class Redrives:
    def __init__(self, settings: Settings, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.client = client or connect(settings)
        self.scripts = Scripts(self.client)
        self.name = f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}"  # this process, as a runner
        self.kafka = settings.channel == "kafka"
        self.tracer = tracing.tracer()  # each step gets a span while tracing is on

    def create(
        self, queue: str, *, actor: str, error_type: str | None = None, task_type: str | None = None,
        since_ms: int | None = None, until_ms: int | None = None, rate: float | None = None, dry_run: bool = False,
    ) -> dict[str, Any]:
        check_name("queue", queue)
        if task_type is not None:
            check_name("type", task_type)
        if error_type is not None and not 1 <= len(error_type) <= 200:
            raise ValidationError("error_type", "must be 1-200 characters")
        rate = self.settings.redrive_rate if rate is None else rate
        if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0 < rate <= MAX_RATE:
            raise ValidationError("rate", f"must be a number of tasks per second in (0, {MAX_RATE:g}]")
        filters = Filters(error_type, task_type, since_ms, until_ms)
        with unavailable_on_redis_errors():
            last: Any = self.client.xrevrange(self.keys.dead(queue), "+", "-", count=1)
            end = last[0][0] if last else "0-0"
            matched = sum(1 for entry, fields in self._scan(queue, "0-0", end) if filters.match(entry, fields))
            if dry_run:
                return {"dry_run": True, "matched": matched}
            redrive_id = new_id(queue)
            now = server_ms(self.client)
            job = {"id": redrive_id, "queue": queue, "state": "running" if matched else "done",
                   "filters": codec.dumps(dataclasses.asdict(filters)).decode(), "rate": repr(float(rate)),
                   "total": matched, "moved": 0, "skipped": 0, "scanned": 0, "cursor": "0-0", "end": end,
                   "created_ms": now, "created_by": actor, "owner": ""}
            if not matched:
                job["finished_ms"] = now
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(self.keys.redrive(redrive_id), mapping=job)  # type: ignore[arg-type]
            pipe.zadd(self.keys.redrives(queue), {redrive_id: now})
            if matched:
                pipe.sadd(self.keys.active_redrives(queue), redrive_id)
            pipe.execute()
        log.info("re-drive created", extra={"fields": {"redrive_id": redrive_id, "queue": queue, "actor": actor,
                                                      "total": matched, "rate": rate}})
        return self._shown(job)

    def get(self, redrive_id: str) -> dict[str, Any] | None:
        if queue_of(redrive_id) is None:
            return None
        with unavailable_on_redis_errors():
            job: Any = self.client.hgetall(self.keys.redrive(redrive_id))
        return self._shown(job) if job else None

    def list(self, queue: str, limit: int = 50) -> list[dict[str, Any]]:
        check_name("queue", queue)
        with unavailable_on_redis_errors():
            ids: Any = self.client.zrevrange(self.keys.redrives(queue), 0, limit - 1)
            pipe = self.client.pipeline(transaction=False)
            for redrive_id in ids:
                pipe.hgetall(self.keys.redrive(redrive_id))
            jobs = pipe.execute()
        return [self._shown(job) for job in jobs if job]

    def cancel(self, redrive_id: str, actor: str) -> dict[str, Any]:
        queue = queue_of(redrive_id)
        if queue is None:
            raise NotFound(f"no re-drive with id {redrive_id[:200]!r}")
        keys = [self.keys.redrive(redrive_id), self.keys.active_redrives(queue)]
        with unavailable_on_redis_errors():
            reply: Any = self.scripts.redrive_cancel(keys=keys, args=[redrive_id, actor], client=self.client)
        if reply[0] == "ended":
            if not reply[1]:
                raise NotFound(f"no re-drive with id {redrive_id[:200]!r}")
            raise Conflict(f"the re-drive already ended: {reply[1]}", reply[1])
        log.info("re-drive cancelled", extra={"fields": {"redrive_id": redrive_id, "actor": actor}})
        found = self.get(redrive_id)
        assert found is not None
        return found

    def run(self, redrive_id: str, stop: threading.Event, on_progress: Progress | None = None,
            wait_for_others: bool = True, retry_unavailable: bool = True) -> dict[str, Any]:
        """Run the re-drive in this thread, paced at its rate, until it ends or `stop` is set;
        while another runner holds its lease, follow it (`on_progress`) and take over if that
        runner dies (`wait_for_others=False`: return instead, as the workers' runner does, which
        looks again a second later). Redis unavailable: retried, or raised with
        `retry_unavailable=False`. On `stop` the lease is let go at once, so another runner
        continues without waiting for it to expire. Returns the job as it then is."""
        queue = queue_of(redrive_id)
        if queue is None:
            raise NotFound(f"no re-drive with id {redrive_id[:200]!r}")
        key = self.keys.redrive(redrive_id)
        while not stop.is_set():
            try:
                with unavailable_on_redis_errors():
                    held = self.scripts.redrive_claim(keys=[key], args=[self.name, LEASE_MS], client=self.client)
                if held:
                    self._drive(redrive_id, queue, stop, on_progress)
                job = self.get(redrive_id)
                if job is None or job["state"] != "running" or (not held and not wait_for_others):
                    break
                if on_progress:
                    on_progress(job)
            except Unavailable as exc:  # retried from the cursor: a step that landed is not redone
                if not retry_unavailable:
                    raise
                log.warning("re-drive paused: Redis unavailable", extra={"fields": {"error": str(exc)[:200]}})
            stop.wait(FOLLOW_S)
        if stop.is_set():
            with contextlib.suppress(Unavailable), unavailable_on_redis_errors():
                self.scripts.redrive_claim(keys=[key], args=[self.name, 0], client=self.client)  # let go: expires now
        found = self.get(redrive_id)
        if found is None:
            raise NotFound(f"no re-drive with id {redrive_id[:200]!r}")
        return found

    def _drive(self, redrive_id: str, queue: str, stop: threading.Event, on_progress: Progress | None) -> bool:
        """Steps until the job ends (False) or is fenced off (False); True to claim again."""
        key = self.keys.redrive(redrive_id)
        with unavailable_on_redis_errors():
            job: Any = self.client.hgetall(key)
        if job.get("state") != "running":
            return False
        filters = Filters(**codec.loads(job["filters"]))
        rate, cursor, end = float(job["rate"]), job["cursor"], job["end"]
        began, moved_here = time.monotonic(), 0
        while not stop.is_set():
            allowed = min(MAX_STEP, int(rate * (time.monotonic() - began + STEP_S)) - moved_here)
            if allowed < 1:
                stop.wait(STEP_S)
                continue
            with unavailable_on_redis_errors(), self._traced(redrive_id, queue):
                batch, after, scanned, last = self._next(queue, cursor, end, filters, allowed)
                reply: Any = self._step(redrive_id, queue, cursor, after, scanned, last, batch)
            if reply[0] != "ok":
                log.info("re-drive step fenced off", extra={"fields": {"redrive_id": redrive_id, "why": reply[1]}})
                return False
            moved_here += len(batch)
            cursor = after
            if on_progress:
                found = self.get(redrive_id)
                if found:
                    on_progress(found)
            if last:
                log.info("re-drive done", extra={"fields": {"redrive_id": redrive_id}})
                return False
        return False

    def _traced(self, redrive_id: str, queue: str) -> contextlib.AbstractContextManager[object]:
        """A step's span (`redrive <queue>`) while tracing is on; nothing otherwise."""
        if self.tracer is None:
            return contextlib.nullcontext()
        attributes = {"messaging.destination.name": queue, "taskbus.redrive.id": redrive_id}
        return tracing.span(self.tracer, f"redrive {queue}", attributes=attributes)

    def _next(self, queue: str, cursor: str, end: str, filters: Filters,
              limit: int) -> tuple[Batch, str, int, bool]:
        """Up to `limit` matching dead letters after `cursor` (and up to `end`): the batch, the
        cursor after it, how many entries were scanned, and whether the scan reached `end`."""
        batch: Batch = []
        scanned, after = 0, cursor
        for entry, fields in self._scan(queue, cursor, end):
            scanned += 1
            after = entry
            if filters.match(entry, fields) and queue_of(fields.get("id", "")) == queue:
                batch.append((entry, fields))
                if len(batch) == limit:
                    return batch, after, scanned, after == end
        return batch, end if end != "0-0" else cursor, scanned, True

    def _scan(self, queue: str, cursor: str, end: str) -> Iterator[tuple[str, dict[str, str]]]:
        """The dead letters after `cursor` up to `end`, a page at a time."""
        if end == "0-0":
            return
        start = f"({cursor}" if cursor != "0-0" else "-"
        while True:
            page: Any = self.client.xrange(self.keys.dead(queue), start, end, count=SCAN_PAGE)
            yield from page
            if len(page) < SCAN_PAGE:
                return
            start = f"({page[-1][0]}"

    def _step(self, redrive_id: str, queue: str, cursor: str, after: str, scanned: int, last: bool,
              batch: Batch) -> Any:
        target = self.keys.outbox(queue) if self.kafka else self.keys.stream(queue)
        keys = [self.keys.redrive(redrive_id), self.keys.dead(queue), target, self.keys.delayed(queue),
                self.keys.active_redrives(queue)]
        args: Args = [self.name, LEASE_MS, cursor, after, "outbox" if self.kafka else "stream",
                           self.settings.pending_ttl_s, scanned, "1" if last else "0", redrive_id]
        for entry, fields in batch:
            keys.append(self.keys.task(fields["id"]))
            args += [entry, fields["id"], codec.dumps(fields).decode()]
        return self.scripts.redrive_step(keys=keys, args=args, client=self.client)

    def active(self, queue: str) -> Ids:
        with unavailable_on_redis_errors():
            ids: Any = self.client.smembers(self.keys.active_redrives(queue))
        return sorted(ids)

    def _shown(self, job: dict[str, Any]) -> dict[str, Any]:
        filters = Filters(**codec.loads(job["filters"])) if job.get("filters") else Filters()
        return {
            "id": job.get("id"), "queue": job.get("queue"), "state": job.get("state"), "filters": filters.shown(),
            "rate": float(job.get("rate") or 0), "total": int(job.get("total") or 0),
            "moved": int(job.get("moved") or 0), "skipped": int(job.get("skipped") or 0),
            "scanned": int(job.get("scanned") or 0), "created_at": iso(str(job.get("created_ms") or "")),
            "created_by": job.get("created_by"), "finished_at": iso(str(job.get("finished_ms") or "")),
            "cancelled_by": job.get("cancelled_by"), "owner": job.get("owner") or None,
        }

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> Redrives:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RedriveRunner:
    """A daemon thread that continues the running re-drives of `queues` (a callable is asked
    each time, so a console follows queues that appear later)."""

    def __init__(self, settings: Settings, queues: Sequence[str] | Callable[[], Sequence[str]]) -> None:
        self.settings = settings
        self.queues = queues
        self.redrives = Redrives(settings)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="redrive-runner")

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.redrives.close()

    def _loop(self) -> None:
        while not self._stop.wait(FOLLOW_S):
            try:
                queues = self.queues() if callable(self.queues) else self.queues
                for queue in queues:
                    for redrive_id in self.redrives.active(queue):
                        self.redrives.run(redrive_id, self._stop, wait_for_others=False)
            except Unavailable:
                continue  # Redis is away: look again later
            except Exception:  # noqa: BLE001 - the runner must outlive any one job
                log.exception("re-drive runner error")
