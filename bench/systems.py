"""The systems under test in the drain section (taskbus on Redis Streams, on Kafka, and the peer
queues): how to enqueue one task to each, start its workers and check that it drained."""

from __future__ import annotations

import dataclasses
import functools
import importlib
from collections.abc import Callable

from bench.config import KAFKA_PREQUEUE_BATCH, PREFIX, QUEUE, Config
from bench.procs import BIN, Proc, wait_for
from bench.stack import KEYS, Stack, Store
from taskbus.task import TaskSpec

Enqueue = Callable[[], None]  # enqueues one task
EnqueueMany = Callable[[int], None]  # enqueues k tasks


@dataclasses.dataclass(frozen=True)
class System:
    """One system under test. Every callable takes the round's queue: QUEUE, or for Kafka a
    fresh one per round (`fresh_queue`), hence a fresh topic and consumer group."""

    key: str
    family: str
    procs: int
    n: int  # drain size: slow peers drain fewer tasks to fit the time budget
    label: str
    one: Callable[[str], Enqueue]  # called once per pre-queue (the peers import their app then)
    start: Callable[[str], list[Proc]]
    many: Callable[[str], EnqueueMany] | None = None  # the untimed rest of the pre-queue, in batches
    check: Callable[[str, int], None] | None = None  # drained? while the workers still run
    after: Callable[[str, int], None] | None = None  # checked once the workers have stopped
    fresh_queue: Callable[[], str] | None = None
    broker: bool = False  # report the Kafka broker's CPU and the workers' rebalances


def drain_systems(stack: Stack, cfg: Config) -> list[System]:
    """Every system `--only` selects, in table order."""
    systems: list[System] = []
    if "drain" in cfg.only:
        systems += taskbus_systems(stack, cfg)
        from bench.priority import priority_systems  # it builds on this module's System

        systems += priority_systems(stack, cfg)
    if "kafka" in cfg.only:
        systems += kafka_systems(stack, cfg)
    if "peers" in cfg.only:
        systems += peer_systems(stack, cfg)
    return systems


def taskbus_systems(stack: Stack, cfg: Config) -> list[System]:
    """taskbus on Redis Streams, 1 and 2 worker processes at each CONCURRENCY."""
    return [
        System(
            key=f"taskbus/{p}p/c{c}",
            family="taskbus",
            procs=p,
            n=cfg.n,
            label=f"taskbus {p} proc(s), CONCURRENCY={c}",
            one=functools.partial(taskbus_one, stack),
            start=lambda _queue, p=p, c=c: stack.taskbus_workers(p, c),
            check=functools.partial(check_taskbus_drained, stack),
        )
        for p in (1, 2)
        for c in cfg.concurrencies
    ]


def kafka_systems(stack: Stack, cfg: Config) -> list[System]:
    """The same task (one INCR) and N as the Redis rows; each round on a fresh queue."""
    return [
        System(
            key=f"taskbus-kafka/{p}p/c{c}",
            family="taskbus-kafka",
            procs=p,
            n=cfg.n,
            label=f"taskbus on Kafka {p} proc(s), CONCURRENCY={c}",
            fresh_queue=stack.fresh_kafka_queue,
            one=functools.partial(kafka_one, stack),
            many=functools.partial(kafka_many, stack),
            start=functools.partial(stack.kafka_workers, count=p, concurrency=c),
            check=functools.partial(check_kafka_queue, stack),
            after=functools.partial(check_kafka_committed, stack),
            broker=True,
        )
        for p in (1, 2)
        for c in cfg.concurrencies
    ]


def peer_systems(stack: Stack, cfg: Config) -> list[System]:
    """The peer queues on the same Redis with the same per-task work (one INCR), at their quietest
    log level; the slow ones drain fewer tasks (cfg.n_slow) to fit the time budget."""
    n, slow = cfg.n, cfg.n_slow
    dramatiq = [str(BIN / "dramatiq"), "bench.peers.dramatiq_app", "--threads", "8", "--processes"]
    huey = [str(BIN / "huey_consumer"), "bench.peers.huey_app.huey", "-n", "-q", "-k"]
    huey_thread, huey_process = huey + ["thread", "-w", "8"], huey + ["process", "-w", "2"]
    rq = [str(BIN / "rq"), "worker", "-w", "rq.worker.SimpleWorker", "-u", stack.url, "--logging_level", "WARNING"]
    celery = [str(BIN / "celery"), "-A", "bench.peers.celery_app", "worker", "-P", "prefork", "-c", "2", "-Q", QUEUE]
    celery += ["-l", "WARNING", "--without-gossip", "--without-mingle", "--without-heartbeat"]
    rows: list[tuple[str, str, int, int, str, str, list[str]]] = [
        ("dramatiq/1p", "dramatiq", 1, n, "Dramatiq 1 proc × 8 threads", "dramatiq_app", dramatiq + ["1"]),
        ("dramatiq/2p", "dramatiq", 2, n, "Dramatiq 2 procs × 8 threads", "dramatiq_app", dramatiq + ["2"]),
        ("huey/thread", "huey", 1, slow["huey"], "Huey thread workers (-w 8)", "huey_app", huey_thread),
        ("huey/process", "huey", 2, slow["huey"], "Huey process workers (-w 2)", "huey_app", huey_process),
        ("rq/simple", "rq", 1, slow["rq"], "RQ SimpleWorker", "rq_app", rq + [QUEUE]),
        ("celery/prefork", "celery", 2, slow["celery"], "Celery prefork -c 2", "celery_app", celery),
    ]
    return [
        System(
            key=key,
            family=family,
            procs=procs,
            n=size,
            label=label,
            one=peer_one(module),
            start=lambda _queue, family=family, argv=argv: [stack.spawn(family, argv)],
        )
        for key, family, procs, size, label, module, argv in rows
    ]


# -- enqueueing one task -----------------------------------------------------------------------


def taskbus_one(stack: Stack, queue: str = QUEUE) -> Enqueue:
    store = Store(stack.settings())
    spec = TaskSpec(type="incr", queue=queue)
    return lambda: store.enqueue(spec)


def kafka_one(stack: Stack, queue: str) -> Enqueue:
    """Store.enqueue on the Kafka channel: returns once the broker acknowledged the record."""
    store = stack.kafka_store(queue)
    spec = TaskSpec(type="incr", queue=queue)
    return lambda: store.enqueue(spec)


def kafka_many(stack: Stack, queue: str) -> EnqueueMany:
    """Store.enqueue_many by KAFKA_PREQUEUE_BATCH: one ack wait per batch, not per task."""
    store = stack.kafka_store(queue)
    spec = TaskSpec(type="incr", queue=queue)

    def many(k: int) -> None:
        for i in range(0, k, KAFKA_PREQUEUE_BATCH):
            store.enqueue_many([(spec, None)] * min(KAFKA_PREQUEUE_BATCH, k - i))

    return many


def peer_one(module: str) -> Callable[[str], Enqueue]:
    """The peer app's enqueue_one (on its own queue), imported only when its pre-queue starts:
    the peer modules read BENCH_REDIS_URL at import."""

    def make(_queue: str) -> Enqueue:
        return importlib.import_module(f"bench.peers.{module}").enqueue_one  # type: ignore[no-any-return]

    return make


# -- completion checks: nothing lost, nothing run twice, nothing left pending -----------------


def check_taskbus_drained(stack: Stack, queue: str, n: int) -> None:
    r = stack.r
    stream = f"{PREFIX}:{{{queue}}}:stream"

    def drained() -> bool:
        pending = r.xpending(stream, "taskbus")["pending"]
        return r.xlen(stream) == 0 and pending == 0

    try:
        wait_for(drained, 10, "the taskbus stream to be empty and acknowledged")
    except RuntimeError:
        raise RuntimeError(
            f"taskbus: stream has {r.xlen(stream)} entries, "
            f"{r.xpending(stream, 'taskbus')['pending']} pending after all {n} ran"
        ) from None
    statuses = task_statuses(stack, queue)
    if statuses.get("succeeded", 0) != n or len(statuses) != 1:
        raise RuntimeError(f"taskbus: task statuses after the drain: {statuses}")


def check_kafka_queue(stack: Stack, queue: str, n: int) -> None:
    """Kafka channel: nothing left in the outbox or the delay schedule, no dead letter, every
    task `succeeded` (Redis holds the task state on both channels)."""
    r = stack.r
    outbox, delayed, dead = KEYS.outbox(queue), KEYS.delayed(queue), KEYS.dead(queue)
    try:
        wait_for(lambda: r.zcard(outbox) == 0 and r.zcard(delayed) == 0, 10, "an empty outbox")
    except RuntimeError:
        raise RuntimeError(
            f"taskbus on Kafka: outbox {r.zcard(outbox)}, delayed {r.zcard(delayed)} after all {n} ran"
        ) from None
    statuses = task_statuses(stack, queue)
    if statuses.get("succeeded", 0) != n or len(statuses) != 1 or r.exists(dead):
        raise RuntimeError(f"taskbus on Kafka: task statuses after the drain: {statuses}, dead: {r.exists(dead)}")


def check_kafka_committed(stack: Stack, queue: str, n: int) -> None:
    """Kafka channel, once the workers have left the group: the offsets committed for the
    group add up to N (every record's outcome recorded). The broker's high-water mark is not
    used: tansu reports it wrong."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    settings = stack.kafka_settings(queue)
    topic, group = f"{settings.kafka_topic_prefix}.{queue}", f"{settings.consumer_group}.{queue}"
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": group, "enable.auto.commit": False}
    )
    try:
        parts = [TopicPartition(topic, i) for i in range(settings.kafka_partitions)]
        committed = sum(max(0, tp.offset) for tp in consumer.committed(parts, timeout=10))
    except KafkaException as exc:
        raise RuntimeError(f"taskbus on Kafka: committed offsets of {group}: {exc}") from None
    finally:
        consumer.close()
    if committed != n:
        raise RuntimeError(f"taskbus on Kafka: group {group} committed {committed} records of {n}")


def task_statuses(stack: Stack, queue: str = QUEUE) -> dict[str, int]:
    """How many of the queue's task hashes hold each status."""
    r = stack.r
    counts: dict[str, int] = {}
    keys = list(r.scan_iter(f"{PREFIX}:{{{queue}}}:task:*", count=2000))
    for i in range(0, len(keys), 1000):
        pipe = r.pipeline(transaction=False)
        for k in keys[i : i + 1000]:
            pipe.hget(k, "status")
        for status in pipe.execute():
            counts[status] = counts.get(status, 0) + 1
    return counts
