"""The shared test handlers plus schedules on the test's queue (the worker's first QUEUES
entry), each counting executions in `<queue>:runs` (task id -> count) through `record`.
With SCHEDULES_ONLY set, the schedules without the handlers: a worker that fires slots and runs
none of their tasks (the clock-skew test's libfaketime breaks `time.sleep` in handlers)."""

from __future__ import annotations

import os

from taskbus import Registry

if os.environ.get("SCHEDULES_ONLY"):
    registry = Registry()
else:
    from tests.handlers import registry

QUEUE = os.environ["QUEUES"].split(",")[0]
RUNS = f"{QUEUE}:runs"

registry.schedule("race", "record", every_s=1, queue=QUEUE, payload={"key": RUNS})
registry.schedule("skip", "record", every_s=1, queue=QUEUE, payload={"key": RUNS}, misfire="skip")
registry.schedule("once", "record", every_s=1, queue=QUEUE, payload={"key": RUNS}, misfire="once")
registry.schedule("all3", "record", every_s=1, queue=QUEUE, payload={"key": RUNS}, misfire="all", max_catchup=3)
registry.schedule("slow", "record", every_s=1, queue=QUEUE, payload={"key": RUNS, "seconds": 2.2}, overlap=False)

__all__ = ["registry"]
