# lockstep: `make run` serves the API, `make test` runs every check. Both set up .venv first:
# run installs the service's own dependencies only; test and bench add their extras on top.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# One stamp per set of extras installed; each is redone when pyproject.toml changes.
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run test lint bench fuzz soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Each set in one pip run: the extras include the service's own dependencies.
PIP_INSTALL := $(BIN)/python -m pip install --quiet

$(RUN_STAMP): pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e .
	touch $@

$(TEST_STAMP): pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[test]'
	touch $@ $(RUN_STAMP)

$(BENCH_STAMP): pyproject.toml | $(BIN)/python
	$(PIP_INSTALL) -e '.[bench]'
	touch $@ $(RUN_STAMP)

run: $(RUN_STAMP)
	mkdir -p data
	$(BIN)/gunicorn --config config/gunicorn.conf.py

lint: $(TEST_STAMP)
	$(BIN)/ruff check
	$(BIN)/ruff format --check
	$(BIN)/mypy

# PostgreSQL cases run against $LOCKSTEP_TEST_POSTGRES_URL if set, else against a throwaway
# cluster started here (needs root and Debian's postgresql); without either they skip.
test: $(TEST_STAMP) lint
	bash scripts/system-deps.sh
	if [ -z "$${LOCKSTEP_TEST_POSTGRES_URL:-}" ]; then \
		pg_env=$$(bash scripts/test-postgres.sh --env) \
			|| echo "no PostgreSQL test server (needs root and postgresql): its tests skip (fail with CI set)"; \
		eval "$$pg_env"; \
	fi; \
	$(BIN)/pytest

# lockstep as `make run` starts it against aiohttp hello world and its peers (durable floor,
# Redis, PostgreSQL, etcd's lock); writes docs/benchmarks.md and docs/benchmarks.png. Needs wrk,
# and for the peers redis-server, postgresql and etcd-server (Debian packages;
# scripts/system-deps.sh installs them).
# BENCH_ARGS="--rounds 5 --duration 10", "--only access", "--no-peers" etc.
bench: $(BENCH_STAMP)
	@command -v wrk >/dev/null || { echo "wrk not found: apt-get install wrk (or brew install wrk)"; exit 2; }
	$(BIN)/python -m bench.run $(BENCH_ARGS)

# A longer schemathesis run than the suite's: FUZZ_EXAMPLES per operation, any FUZZ_SEED.
fuzz: $(TEST_STAMP)
	FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-500} FUZZ_TIMEOUT=1800 $(BIN)/pytest -q \
		--timeout 1900 tests/test_fuzz.py

# Minutes-long checks `make test` leaves out (pytest marker `soak`): 1,000,000 distinct counter
# names against one worker's RSS, and a 1-second round of every benchmark workload (needs wrk).
soak: $(TEST_STAMP)
	$(BIN)/pytest -q -m soak --timeout 1800

clean:
	rm -rf $(VENV) data .pytest_cache .mypy_cache .ruff_cache
