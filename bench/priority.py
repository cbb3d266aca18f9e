"""Drain with mixed priorities, beside the plain taskbus rows of the drain section (same run,
same N, same one-INCR task): the same pre-queue with each task's priority cycling 0-9, so nine
tenths land in level streams and every worker reads through `take.lua`. The plain rows are the
"no priorities" figure (the default path is unchanged by the feature); these are its cost when used."""

from __future__ import annotations

import functools
import itertools

from bench.config import QUEUE, Config
from bench.procs import wait_for
from bench.stack import KEYS, Stack, Store
from bench.systems import Enqueue, System, task_statuses
from taskbus.task import PRIORITIES, TaskSpec


def priority_systems(stack: Stack, cfg: Config) -> list[System]:
    """taskbus on Redis Streams with priorities 0-9, 1 and 2 worker processes at each CONCURRENCY."""
    return [
        System(
            key=f"taskbus-prio/{p}p/c{c}",
            family="taskbus-prio",
            procs=p,
            n=cfg.n,
            label=f"taskbus, priorities 0-9 mixed, {p} proc(s), CONCURRENCY={c}",
            one=functools.partial(mixed_one, stack),
            start=lambda _queue, p=p, c=c: stack.taskbus_workers(p, c),
            check=functools.partial(check_levels_drained, stack),
        )
        for p in (1, 2)
        for c in cfg.concurrencies
    ]


def mixed_one(stack: Stack, queue: str = QUEUE) -> Enqueue:
    store = Store(stack.settings())
    specs = itertools.cycle([TaskSpec(type="incr", queue=queue, priority=p) for p in PRIORITIES])
    return lambda: store.enqueue(next(specs))


def check_levels_drained(stack: Stack, queue: str, n: int) -> None:
    """Every level stream empty (acknowledged entries are deleted), every task succeeded."""
    streams = [KEYS.level_stream(queue, p) for p in PRIORITIES]
    wait_for(lambda: all(stack.r.xlen(s) == 0 for s in streams), 10, "every level stream to be empty")
    statuses = task_statuses(stack, queue)
    if statuses.get("succeeded", 0) != n or len(statuses) != 1:
        raise RuntimeError(f"taskbus-prio: task statuses after the drain: {statuses}")
