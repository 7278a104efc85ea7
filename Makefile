# The two commands: `make demo` runs fusionrec end to end on the embedded stack; `make test` runs the tests.
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= $(shell bash scripts/shared_data.sh)
DATA ?= $(SHARED)/taobao-userbehavior-slice/UserBehavior_slice.csv.gz
ML1M ?= $(SHARED)/movielens-1m-partial/ratings_first2999users.dat.gz
ML100K ?= $(SHARED)/movielens-100k/u.data.gz

.PHONY: setup demo lint test test-unit bench clean
setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/fusionrec demo $(DATA)

# Lint and format check (ruff, configured in pyproject.toml), then every test.
lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint
	$(BIN)/python -m pytest

test-unit: setup
	$(BIN)/python -m pytest tests/unit

# Every benchmark behind BENCHMARKS.md (several minutes: run nothing else heavy meanwhile).
bench: setup
	$(BIN)/python benchmarks/bench_replay.py $(DATA)
	$(BIN)/python benchmarks/bench_faust_delivery.py $(DATA)
	$(BIN)/python benchmarks/bench_worker.py $(DATA)
	$(BIN)/python benchmarks/bench_worker.py $(ML1M)
	$(BIN)/python benchmarks/bench_worker.py $(DATA) --latency --rate 1000 --limit 30000
	$(BIN)/python benchmarks/bench_freshness.py $(DATA)
	$(BIN)/python benchmarks/bench_ranker.py
	$(BIN)/python benchmarks/bench_parity.py $(DATA) --limit 30000 --rate 1000
	$(BIN)/python benchmarks/bench_parity.py $(ML100K) --limit 30000 --rate 1000
	$(BIN)/fusionrec evaluate $(DATA) --out build/evaluation/taobao --no-progress
	$(BIN)/fusionrec evaluate $(ML100K) --out build/evaluation/ml100k --no-progress
	$(BIN)/fusionrec evaluate $(ML1M) --out build/evaluation/ml1m --no-progress

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
