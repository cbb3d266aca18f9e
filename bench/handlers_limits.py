"""Bench handlers with flow-control limits (section "limits"): the `incr` task of
bench.handlers under a per-key concurrency limit and under a per-key rate limit, 100 keys."""

from __future__ import annotations

from bench.handlers import incr, registry

# 4 at once per key: with 100 keys the limit rarely binds (400 slots > the workers' threads),
# so the row shows what the bookkeeping costs.
registry.register("incr.conc", concurrency=4, concurrency_key="k")(incr)
# 1000/s per key over 100 keys: above what the drain reaches, so it shows the GCRA's cost.
registry.register("incr.rate", rate="1000/s", burst=10, concurrency_key="k")(incr)

__all__ = ["registry"]
