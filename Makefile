# Quick start: `make up` runs the whole stack locally; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: up test chaos venv tools clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-runtime.txt requirements-dev.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required" if sys.version_info < (3, 11) else 0)'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .  # the `taskbus` command
	touch $@

# System tools some tests drive (Debian packages): libfaketime for the clock-skew scenario,
# redis-cli (redis-tools) for the compose cluster profile's init script, Chromium for the
# dashboard's browser tests (Playwright drives it; never its own download).
tools:
	@command -v faketime >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  { apt-get install -y -q faketime >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q faketime >/dev/null; }; }; } || \
	  echo "faketime is missing and could not be installed: the clock_skew scenario will fail"
	@command -v redis-cli >/dev/null || { [ "$$(id -u)" = 0 ] && \
	  { apt-get install -y -q redis-tools >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q redis-tools >/dev/null; }; }; } || \
	  echo "redis-cli is missing and could not be installed: the compose cluster profile's init test will fail"
	@test -x /usr/bin/chromium || { [ "$$(id -u)" = 0 ] && \
	  { apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }; } || \
	  echo "chromium is missing and could not be installed: the dashboard's browser tests will fail"

up: venv
	$(BIN)/python -m local

test: venv tools
	$(BIN)/ruff check .  # everything: core, functions, tests, testkit, chaos, bench, local
	$(BIN)/mypy --strict taskbus
	$(BIN)/python -m pytest -n 4 --dist loadgroup -m "not chaos"  # 4 runners on 2 cores: the tests mostly wait on real processes; the Redis Cluster tests (xdist_group "cluster") share one runner, hence one cluster
	$(BIN)/python -m pytest -m chaos  # the fault scenarios one at a time, after the rest: they load the machine

# The fault-injection suite at full size (tests/test_chaos.py runs the short versions).
chaos: venv tools
	$(BIN)/python -m chaos
	SCHEMATHESIS_MAX_EXAMPLES=200 SCHEMATHESIS_PHASES=examples,coverage,fuzzing,stateful \
	SCHEMATHESIS_KEYED_PHASES=examples,coverage,fuzzing,stateful \
	$(BIN)/python -m pytest tests/test_openapi.py -k schemathesis --timeout 1800

clean:
	rm -rf $(VENV) .run .pytest_cache

# Benchmarks (bench/README.md). Bench-only dependencies (the peer queues) go into the same
# .venv from bench/requirements.txt; nothing at runtime imports them.
# `make bench BENCH_ARGS=--quick` for a one-round try-out.
.PHONY: bench bench-soak

$(VENV)/.bench-installed: $(VENV)/.installed bench/requirements.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r bench/requirements.txt
	touch $@

bench: venv $(VENV)/.bench-installed
	$(BIN)/python -m bench.run $(BENCH_ARGS)

bench-soak: venv $(VENV)/.bench-installed
	$(BIN)/python -m bench.soak $(SOAK_ARGS)
