# The two commands: `make demo` runs fusionrec end to end on the embedded stack; `make test` runs the tests.
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/taobao-userbehavior-slice/UserBehavior_slice.csv.gz

.PHONY: setup demo test test-unit bench clean
setup:
	@bash scripts/setup.sh

demo: setup
	$(BIN)/fusionrec demo $(DATA)

test: setup
	$(BIN)/python -m pytest

test-unit: setup
	$(BIN)/python -m pytest tests/unit

bench: setup
	$(BIN)/python benchmarks/bench_replay.py $(DATA)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
