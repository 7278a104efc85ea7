# The two commands: `make demo` runs fusionrec end to end on the embedded stack; `make test` runs the tests.
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz
ML1M ?= ../shared/data/movielens-1m-partial/ratings_first2999users.dat.gz

.PHONY: setup demo test test-unit bench clean
setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/fusionrec demo $(DATA)

test: setup
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

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
