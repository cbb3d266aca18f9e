"""Peer task queues, each doing one INCR on `bench:count` per task. Bench-only: nothing
outside bench/ imports these. Each reads its Redis from BENCH_REDIS_URL."""

import os

COUNTER = "bench:count"


def redis_url() -> str:
    return os.environ["BENCH_REDIS_URL"]
