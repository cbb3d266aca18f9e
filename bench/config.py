"""What a bench run measures (`Config`, from the command line) and the constants every section shares."""

from __future__ import annotations

import argparse
import dataclasses
import json

from bench.procs import ROOT

QUEUE = "bench"
PREFIX = "bench"
COUNTER = "bench:count"
RESULTS = ROOT / "bench" / "results"
HTTP_LEVELS = (1, 4, 16, 64)
POLL_S = 0.01  # counter poll: each GET costs Redis ~30 µs on this VM, so not faster
MEMORY_BATCH = 1000  # tasks per Store.enqueue_many call in the memory section
FSYNC_SAMPLE, FSYNC_CLIENTS = 50, 32  # the fsync section: one-at-a-time enqueues per round, then threads
# The console section: batches of Client.enqueue_many, timed calls per operation and per state,
# pages followed for the deep page, HTTP calls per RSS reading, running tasks (2 workers × half each).
CONSOLE_BATCH, CONSOLE_CALLS, CONSOLE_DEEP_PAGES, CONSOLE_HTTP_CALLS, CONSOLE_RUNNING = 1000, 30, 100, 300, 1000
BODY = json.dumps({"type": "echo", "payload": {"n": 1}, "queue": QUEUE}, separators=(",", ":"))
# taskbus on Kafka (the `kafka` rows): the embedded broker is a single in-memory node, so
# replication 1; a short session timeout because tansu's group join waits about half of it.
# Partitions: taskbus's default (KAFKA_PARTITIONS=6), enough for the 2 worker processes.
KAFKA = {"channel": "kafka", "kafka_replication_factor": 1, "kafka_session_timeout_ms": 3000}
KAFKA_QUEUE = "bench-k"  # + a sequence number: a fresh topic and consumer group per round
KAFKA_PREQUEUE_BATCH = 100  # Store.enqueue_many batch for the untimed rest of a Kafka pre-queue


@dataclasses.dataclass
class Config:
    """Sizes and selections of one run; written as is (field order too) into the result JSON."""

    quick: bool
    rounds: int
    n: int  # drain size
    n_slow: dict[str, int]  # drain size of peers too slow to drain n tasks in the time budget
    enqueue_sample: int  # tasks per pre-queue timed one at a time, single-threaded
    http_s: float  # seconds per HTTP load level
    latency_tasks: int  # tasks per latency round, sent at `rate`
    rate: float
    longpolls: int  # long-poll samples per round
    batch: int  # tasks per batch (Python batched enqueue, HTTP batch)
    batched_total: int  # tasks per Python batched-enqueue round
    concurrencies: tuple[int, ...]
    only: frozenset[str]
    systems: tuple[str, ...] = ()  # drain only systems whose key contains one of these
    memory_tasks: int = 100_000  # finished tasks held at the memory section's peak
    memory_ttl_s: int = 20  # RESULT_TTL_S of the memory section's workers (production default: 1 day)
    longpoll_clients: int = 2000  # concurrent ?wait= clients on one status instance (the long-poll section)
    longpoll_rate: float = 500.0  # their tasks finish at this rate
    longpoll_wait_s: float = 30.0
    longpoll_settings: dict[str, str] = dataclasses.field(default_factory=dict)  # status instance's Settings changes
    console_tasks: int = 1_000_000  # queued tasks of the console section (and a tenth as many dead letters)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Config:
        """The full run's sizes, or the try-out's with --quick; explicit options win over both."""
        quick = args.quick
        n = args.n or (2000 if quick else 20000)
        return cls(
            quick=quick,
            rounds=args.rounds or (1 if quick else 3),
            n=n,
            n_slow={"huey": min(n, 10000), "rq": min(n, 2000), "celery": min(n, 6000)},
            enqueue_sample=1000 if quick else 2000,
            http_s=2 if quick else 3,
            latency_tasks=400 if quick else 1000,
            rate=200.0,
            longpolls=30 if quick else 100,
            batch=100,
            batched_total=2000 if quick else 10000,
            concurrencies=(8, 32),
            only=frozenset(x.strip() for x in args.only.split(",") if x.strip()),
            systems=tuple(x.strip() for x in args.systems.split(",") if x.strip()),
            memory_tasks=args.memory_tasks or (20_000 if quick else 100_000),
            memory_ttl_s=args.memory_ttl,
            longpoll_clients=args.longpoll_clients,
            longpoll_settings=dict(
                kv.strip().split("=", 1) for kv in args.longpoll_settings.split(",") if "=" in kv
            ),
            console_tasks=args.console_tasks or (100_000 if quick else 1_000_000),
        )
