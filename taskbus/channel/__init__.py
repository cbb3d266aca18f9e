"""The channel: how tasks travel from the enqueue function to the workers.

Two halves, one interface each, with two backends as siblings:

    Outlet   the producer half: where a new task's record goes in the same script that writes
             its state (`target`), and what must happen after (`recorded`).
    Channel  the consumer half: read deliveries, start them (fenced), renew, hand back,
             reclaim, finish.

    StreamsOutlet / StreamsChannel   Redis Streams with a consumer group (`channel.streams`)
    KafkaOutlet / KafkaChannel       a Kafka topic per queue, state in Redis (`channel.kafka`)

The fenced Redis transitions both channels share live in `channel.fences`. Backend errors
never leave a channel: connection trouble is `Unavailable`, a lost consumer group `DataLost`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any, Literal, Protocol

from taskbus import codec
from taskbus.registry import ANY_TYPE, HandlerTable
from taskbus.settings import Settings

if TYPE_CHECKING:
    from taskbus.channel.outages import Outages
    from taskbus.state.scripts import Scripts

OutcomeKind = Literal["succeeded", "retry", "failed", "cancelled"]
SkipKind = Literal["dead", "done", "busy", "lost", "deferred", "paused", "throttled"]


@dataclasses.dataclass(frozen=True)
class Delivery:
    """One entry (or record) handed to this consumer; `task_id` is None when it is malformed."""

    queue: str
    entry: str
    task_id: str | None
    fields: dict[str, str]


@dataclasses.dataclass(frozen=True)
class Job:
    """A delivery that `start` marked running: everything needed to run one attempt."""

    queue: str
    entry: str
    task_id: str
    type: str
    payload: Any
    attempt: int
    max_attempts: int
    timeout_s: float
    traceparent: str | None = None  # the producer span's W3C context, kept while tracing was on


@dataclasses.dataclass(frozen=True)
class Run:
    """Verdict of `start`: the attempt is ours to run."""

    job: Job


@dataclasses.dataclass(frozen=True)
class Skip:
    """Verdict of `start`: not run. `dead`: dead-lettered now (`reason` says why); `done`: already
    finished, acknowledged; `busy`: another worker holds it, asked again later; `lost`: no longer
    ours (reclaimed by another worker); `deferred`: this worker has no handler for its type, so
    it waits (no attempt spent) for a worker that has one; `paused`: its queue is paused, so it
    waits, still queued, for the queue to be resumed; `throttled`: held back by its type's
    concurrency or rate limit (`reason`), waiting without spending an attempt."""

    delivery: Delivery
    kind: SkipKind
    reason: str = ""


Verdict = Run | Skip


@dataclasses.dataclass(frozen=True)
class Outcome:
    """The result of one attempt, to be written by `finish`. `body` is the result JSON, or the
    error JSON; `delay_ms` is the retry backoff."""

    job: Job
    kind: OutcomeKind
    body: bytes
    delay_ms: int = 0


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a task goes when it is due: the kind the scripts switch on, and its key."""

    kind: Literal["stream", "outbox"]
    key: str


def run_verdict(d: Delivery, reply: list[Any]) -> Run:
    """A Run from the scripts' `{'run', type, payload, attempt, max_attempts, timeout_s, traceparent}` reply."""
    _, task_type, payload, attempt, max_attempts, timeout_s, traceparent = reply
    assert d.task_id is not None
    job = Job(d.queue, d.entry, d.task_id, task_type, codec.loads(payload), int(attempt), int(max_attempts),
              float(timeout_s), traceparent)
    return Run(job)


class Channel(Protocol):
    """The consumer half. Every method may raise `Unavailable` (retry later) or `DataLost`
    (the backend lost the queue's delivery state: `open` again)."""

    consumer: str
    outages: Outages  # which queues to skip for now (on a cluster: those whose master is down)

    def open(self) -> None:
        """Make sure each queue's group (and topics) exist and join them."""

    def read(self, count: int, block_ms: int) -> list[Delivery]:
        """Up to `count` new deliveries, waiting at most `block_ms` for the first."""

    def pause(self) -> None:
        """Every slot is busy: take no new work, but stay a live member of the group."""

    def reclaim(self, queue: str, limit: int, running: Collection[str]) -> list[Delivery]:
        """Deliveries whose holder is gone (or that waited for one), worth starting now;
        `running` are the entries this worker runs itself."""

    def start(self, queue: str, deliveries: list[Delivery]) -> list[Verdict]:
        """Fence and mark running a batch of deliveries of one queue; one verdict each."""

    def finish(self, queue: str, outcomes: list[Outcome]) -> list[str | None]:
        """Write outcomes (idempotently); per outcome the status written, None if fenced off."""

    def heartbeat(self, queue: str, jobs: list[Job]) -> list[str]:
        """Renew the leases; returns the entries this worker no longer holds."""

    def cancel_requests(self, queue: str) -> set[str]:
        """Ids of the queue's running tasks with a cancel request (this worker's among them)."""

    def paused(self, queue: str) -> bool:
        """Whether the queue is paused (read again at most every PAUSE_CHECK_S)."""

    def describe(self, info: Callable[[], dict[str, Any]]) -> None:
        """What this worker's announcements say of it besides its handlers (host, pid, in flight...)."""

    def release(self, queue: str, jobs: list[Job]) -> None:
        """Hand unfinished jobs back at shutdown, so another worker takes them at once."""

    def reject(self, delivery: Delivery, reason: str) -> None:
        """Dead-letter a delivery that names no well-formed task of its queue."""

    def promote_due(self, queue: str) -> int:
        """Hand due delayed tasks to the channel; returns ms until the next is due (-1: none)."""

    def maintain(self) -> None:
        """Periodic upkeep on the channel's own schedule (called every turn of the loop)."""

    def close(self, drained: bool) -> None:
        """Leave; `drained`: nothing of ours is left running (we may forget our consumer)."""


@dataclasses.dataclass(frozen=True)
class Recorded:
    """A task the enqueue script just created as queued, with the key that deduplicates it
    (its idempotency key, or its own task key when it has none)."""

    task_id: str
    dedupe_key: str
    priority: int = 5  # 0-9 (task.DEFAULT_PRIORITY): what Kafka's record carries


class Outlet(Protocol):
    """The producer half: what the enqueue function does besides writing the task's state.
    `alone`: `prepare` and `recorded` do nothing, so the enqueue script is the whole enqueue
    (the ASGI path then awaits it on the event loop instead of a thread)."""

    alone: bool

    def target(self, queue: str) -> Target:
        """Where the enqueue and promote scripts put a task that is due now."""

    def prepare(self, queues: list[str]) -> None:
        """Before recording: make sure the queues can be published to (a 503 then leaves no state)."""

    def recorded(self, tasks: list[Recorded]) -> None:
        """After recording: publish where needed; on `Unavailable`, no task claims to be queued."""

    def ping(self) -> None:
        """Raise `Unavailable` unless the channel answers."""

    def close(self) -> None:
        """Flush what is in flight and let go of connections."""


def open_channel(settings: Settings, consumer: str, handlers: HandlerTable = ANY_TYPE) -> Channel:
    """The consumer half of CHANNEL for a worker named `consumer` with `handlers` (the task
    types it takes; others are deferred to workers that have a handler, spending no attempt)."""
    if settings.channel == "kafka":
        from taskbus.channel.kafka import KafkaChannel

        return KafkaChannel(settings, consumer, handlers)
    from taskbus.channel.streams import StreamsChannel

    return StreamsChannel(settings, consumer, handlers)


def open_outlet(settings: Settings, scripts: Scripts) -> Outlet:
    """The producer half of CHANNEL, on the enqueuer's Redis scripts."""
    if settings.channel == "kafka":
        from taskbus.channel.kafka.outbox import KafkaOutlet

        return KafkaOutlet(settings, scripts)
    from taskbus.channel.streams import StreamsOutlet

    return StreamsOutlet(settings)
