"""Endpoints of the console function: the admin API under /api/... over the operator core
(`taskbus.admin`), and the dashboard's static files at / and /static/<path>.

Actions are Google API custom methods (`POST /api/tasks/<id>:cancel`), never a GET; every /api
route needs an ADMIN_KEYS bearer key (the matched key's label is the actor the audit trail
names); there are no cookies, so there is nothing for a cross-site request to ride on. With
CONSOLE_READ_ONLY every action answers 403 `read_only`. The process also continues the running
re-drives of its queues (a `RedriveRunner`), so a re-drive goes on while any console lives.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import re
from pathlib import Path
from typing import Any

from werkzeug.routing import BaseConverter

from taskbus import openapi, serving
from taskbus import task as tasks
from taskbus.admin import STATES, Admin
from taskbus.admin.redrive import RedriveRunner, Redrives
from taskbus.client import Client
from taskbus.errors import Forbidden, NotFound, ValidationError
from taskbus.http import Service, cancel_response, json_response, not_found, query_value
from taskbus.http.body import json_body
from taskbus.http.core import JSON_TYPE, Request, Response
from taskbus.http.static import StaticFiles
from taskbus.schedules.store import ScheduleStore
from taskbus.settings import Settings
from taskbus.state.reader import StatusReader
from taskbus.telemetry.metrics import HttpMetrics, QueueCollector

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "console" / "static"
MAX_LIMIT = 200
MAX_CURSOR = 256
PURGEABLE = ("queued", "dead")
REDRIVE_FIELDS = {"error_type", "type", "since", "until", "rate", "dry_run"}
RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)[Tt](\d\d):(\d\d):(\d\d)(?:\.(\d+))?([Zz]|[+-]\d\d:\d\d)")


class QueueName(BaseConverter):
    """A queue in a path: anything but a custom method's suffix, so `GET /api/queues/q:pause`
    is a 405 rather than the overview of a queue named `q:pause`."""

    regex = r"[^/]+(?<!:pause)(?<!:resume)(?<!:purge)"


class ObjectId(BaseConverter):
    """A task or re-drive id in a path, likewise without a custom method's suffix."""

    regex = r"[^/]+(?<!:cancel)(?<!:retry)"


class ScheduleName(BaseConverter):
    """A schedule's name in a path, likewise without a custom method's suffix."""

    regex = r"[^/]+(?<!:pause)(?<!:resume)(?<!:trigger)(?<!:delete)"


class ReadOnly(Forbidden):
    code = "read_only"


class ConsoleAPI:
    converters = {"queue": QueueName, "id": ObjectId, "schedule": ScheduleName}
    routes: tuple[tuple[str, str, str, tuple[str, ...] | None], ...] = (
        ("/api/queues", "GET", "queues", None),
        ("/api/queues/<queue:queue>", "GET", "queue", None),
        ("/api/queues/<queue:queue>/tasks", "GET", "tasks", None),
        ("/api/queues/<queue:queue>:pause", "POST", "pause", None),
        ("/api/queues/<queue:queue>:resume", "POST", "resume", None),
        ("/api/queues/<queue:queue>:purge", "POST", "purge", (JSON_TYPE,)),
        ("/api/queues/<queue:queue>/redrives", "POST", "create_redrive", (JSON_TYPE,)),
        ("/api/queues/<queue:queue>/redrives", "GET", "redrives", None),
        ("/api/tasks/<id:task_id>", "GET", "task", None),
        ("/api/tasks/<id:task_id>:cancel", "POST", "cancel", None),
        ("/api/tasks/<id:task_id>:retry", "POST", "retry", None),
        ("/api/redrives/<id:redrive_id>", "GET", "redrive", None),
        ("/api/redrives/<id:redrive_id>:cancel", "POST", "cancel_redrive", None),
        ("/api/workers", "GET", "workers", None),
        ("/api/queues/<queue:queue>/schedules", "GET", "schedules", None),
        ("/api/queues/<queue:queue>/schedules/<schedule:name>:pause", "POST", "pause_schedule", None),
        ("/api/queues/<queue:queue>/schedules/<schedule:name>:resume", "POST", "resume_schedule", None),
        ("/api/queues/<queue:queue>/schedules/<schedule:name>:trigger", "POST", "trigger_schedule", None),
        ("/api/queues/<queue:queue>/schedules/<schedule:name>:delete", "POST", "delete_schedule", None),
        ("/healthz", "GET", "healthz", None),
        ("/openapi.json", "GET", "openapi", None),
        ("/", "GET", "index", None),
        ("/static/<path:path>", "GET", "static", None),
    )
    keyed = frozenset(endpoint for path, _, endpoint, _ in routes if path.startswith("/api/"))
    actions = frozenset(endpoint for _, method, endpoint, _ in routes if method == "POST")

    def __init__(self, settings: Settings, static_dir: Path = STATIC_DIR) -> None:
        self.settings = settings
        self.admin = Admin(settings)
        self.jobs = Redrives(settings)
        self.reader = StatusReader(settings)  # for /healthz: the queues' data-loss flags
        self.files = StaticFiles(static_dir)
        self.runner: RedriveRunner | None = None

    def admit(self, endpoint: str, args: dict[str, str]) -> None:
        """A read-only console refuses every action before its body is read; a malformed
        queue name or id is a 404 that never reaches a Redis key."""
        if self.settings.console_read_only and endpoint in self.actions:
            raise ReadOnly("this console is read-only (CONSOLE_READ_ONLY=true): actions are refused")
        if "queue" in args and not tasks.NAME_RE.fullmatch(args["queue"]):
            raise NotFound(f"no queue named {args['queue'][:200]!r}")
        if "name" in args and not tasks.NAME_RE.fullmatch(args["name"]):
            raise NotFound(f"no schedule named {args['name'][:200]!r}")
        for name in ("task_id", "redrive_id"):
            if name in args and tasks.queue_of(args[name]) is None:
                raise NotFound(f"no {name.removesuffix('_id').replace('redrive', 're-drive')} with id "
                               f"{args[name][:200]!r}")

    # ----------------------------------------------------------------- queues

    def queues(self, request: Request) -> Response:
        return json_response({"queues": self.admin.overviews(), "read_only": self.settings.console_read_only})

    def queue(self, request: Request, queue: str) -> Response:
        return json_response(self.admin.overview(queue))

    def tasks(self, request: Request, queue: str) -> Response:
        state = query_value(request, "state")
        if state not in STATES:
            raise ValidationError("state", f"is required: one of {', '.join(STATES)}")
        cursor = query_value(request, "cursor") or None
        if cursor is not None and len(cursor) > MAX_CURSOR:
            raise ValidationError("cursor", "is not a cursor this console returned")
        return json_response(self.admin.tasks(queue, state, cursor, _limit(request)))

    def pause(self, request: Request, queue: str) -> Response:
        return json_response(self.admin.pause(queue, actor=request.actor))

    def resume(self, request: Request, queue: str) -> Response:
        return json_response(self.admin.resume(queue, actor=request.actor))

    def purge(self, request: Request, queue: str) -> Response:
        """Drops many tasks at once: the body must name the queue again (`confirm`)."""
        body = _object(json_body(request), {"state", "confirm"})
        state = body.get("state")
        if state not in PURGEABLE:
            raise ValidationError("state", f"must be one of {', '.join(PURGEABLE)}")
        if body.get("confirm") != queue:
            raise ValidationError("confirm", "must be the queue's name: a purge cannot be undone")
        return json_response({"purged": self.admin.purge(queue, state, actor=request.actor)})

    # ----------------------------------------------------------------- tasks

    def task(self, request: Request, task_id: str) -> Response:
        detail = self.admin.task(task_id)
        if detail is None:
            raise not_found(task_id)
        return json_response(detail)  # CONSOLE_REDACT applied by the core

    def cancel(self, request: Request, task_id: str) -> Response:
        return cancel_response(self.admin, task_id, request.actor)

    def retry(self, request: Request, task_id: str) -> Response:
        return json_response({"task": self.admin.retry(task_id, actor=request.actor)})

    # ----------------------------------------------------------------- re-drives

    def create_redrive(self, request: Request, queue: str) -> Response:
        filters = _redrive_body(json_body(request))
        job = self.jobs.create(queue, actor=request.actor, **filters)
        if job.get("dry_run"):
            return json_response(job)
        return json_response(job, 201, {"Location": f"/api/redrives/{job['id']}"})

    def redrives(self, request: Request, queue: str) -> Response:
        return json_response({"redrives": self.jobs.list(queue)})

    def redrive(self, request: Request, redrive_id: str) -> Response:
        job = self.jobs.get(redrive_id)
        if job is None:
            raise NotFound(f"no re-drive with id {redrive_id[:200]!r}")
        return json_response(job)

    def cancel_redrive(self, request: Request, redrive_id: str) -> Response:
        return json_response(self.jobs.cancel(redrive_id, actor=request.actor))

    # ----------------------------------------------------------------- schedules

    def schedules(self, request: Request, queue: str) -> Response:
        return json_response({"schedules": [s.view() for s in self.scheduled.load([queue])]})

    def pause_schedule(self, request: Request, queue: str, name: str) -> Response:
        self.scheduled.set_paused(queue, name, True, request.actor)
        return json_response(self.scheduled.get(queue, name).view())

    def resume_schedule(self, request: Request, queue: str, name: str) -> Response:
        self.scheduled.set_paused(queue, name, False, request.actor)
        return json_response(self.scheduled.get(queue, name).view())

    def trigger_schedule(self, request: Request, queue: str, name: str) -> Response:
        """A run of its own now (a fresh id: no slot is used)."""
        s = self.scheduled.get(queue, name).schedule
        enqueued = self.client.enqueue(s.task_type, s.payload if s.payload is not None else {}, queue=s.queue)
        return json_response({"id": enqueued.id, "status": enqueued.status})

    def delete_schedule(self, request: Request, queue: str, name: str) -> Response:
        self.scheduled.delete(queue, name)
        return json_response({"deleted": name})

    @functools.cached_property
    def scheduled(self) -> ScheduleStore:
        return ScheduleStore(self.settings)

    @functools.cached_property
    def client(self) -> Client:
        return Client(self.settings)

    # ----------------------------------------------------------------- the rest

    def workers(self, request: Request) -> Response:
        return json_response({"workers": self.admin.workers()})

    def healthz(self, request: Request) -> Response:
        self.reader.ping()
        return json_response({"status": "ok"})

    def openapi(self, request: Request) -> Response:
        return Response(200, openapi.encoded("console", self.settings))

    def index(self, request: Request) -> Response:
        return self.files.response("index.html")

    def static(self, request: Request, path: str) -> Response:
        return self.files.response(path)

    def start(self) -> None:
        """Continue the running re-drives of the known queues (asked again each round, so
        queues that appear later are followed)."""
        self.runner = RedriveRunner(self.settings, self.admin.queues)
        self.runner.start()

    def close(self) -> None:
        if self.runner is not None:
            self.runner.stop()
        self.jobs.close()
        self.admin.close()
        self.reader.close()
        for opened in ("scheduled", "client"):
            if opened in self.__dict__:
                self.__dict__[opened].close()


def _limit(request: Request) -> int:
    raw = query_value(request, "limit")
    if raw is None or raw == "":
        return 50
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise ValidationError("limit", f"must be an integer from 1 to {MAX_LIMIT}")
    return int(raw)


def _object(body: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise ValidationError("body", "must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValidationError(unknown[0], "is not a field of this request")
    return body


def _redrive_body(body: Any) -> dict[str, Any]:
    """The filters, rate and dry-run flag of `POST /api/queues/<queue>/redrives`: the JSON
    types here (a field given as null is refused, not taken as absent), the ranges in the core."""
    body = _object(body, REDRIVE_FIELDS)
    filters: dict[str, Any] = {}
    for field, name in (("error_type", "error_type"), ("type", "task_type")):
        if field in body:
            if not isinstance(body[field], str):
                raise ValidationError(field, "must be a string")
            filters[name] = body[field]
    for field in ("since", "until"):
        if field in body:
            filters[f"{field}_ms"] = _rfc3339_ms(field, body[field])
    if "rate" in body:
        rate = body["rate"]
        if isinstance(rate, bool) or not isinstance(rate, int | float):
            raise ValidationError("rate", "must be a number of tasks per second")
        filters["rate"] = rate
    dry_run = body.get("dry_run", False)
    if not isinstance(dry_run, bool):
        raise ValidationError("dry_run", "must be true or false")
    filters["dry_run"] = dry_run
    return filters


def _rfc3339_ms(field: str, value: object) -> int:
    """RFC 3339 (`2026-12-01T10:00:00Z`, any fraction, any offset, `t`/`z` too) in ms since the
    epoch; a leap second counts as the second before it."""
    match = RFC3339.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValidationError(field, "must be an RFC 3339 date-time with a time zone, e.g. 2026-12-01T10:00:00Z")
    year, month, day, hour, minute, second = (int(part) for part in match.group(1, 2, 3, 4, 5, 6))
    micros = int((match.group(7) or "0")[:6].ljust(6, "0"))
    zone = match.group(8).upper()
    offset = dt.timedelta(0) if zone == "Z" else \
        (1 if zone[0] == "+" else -1) * dt.timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    try:
        when = dt.datetime(year, month, day, hour, minute, min(second, 59), micros, dt.timezone(offset))
    except ValueError:
        raise ValidationError(field, "is not a date that exists") from None
    return int(when.timestamp() * 1000)


def make_service(settings: Settings) -> Service:
    """The console's service, guarded by ADMIN_KEYS, with its re-drive runner started."""
    api = ConsoleAPI(settings)
    api.start()
    metrics = HttpMetrics("console", settings.prometheus_multiproc_dir, collectors=[QueueCollector(api.admin)])
    return Service(settings, api, threads=serving.CONSOLE_THREADS, keys=settings.admin_keys, keys_name="ADMIN_KEYS",
                   metrics=metrics)
