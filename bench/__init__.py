"""Benchmarks: `make bench` (python -m bench.run) and `make bench-soak` (python -m bench.soak)."""
