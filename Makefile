# Two commands for a fresh machine: `make run` and `make test` (`make bench`: bench/README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU build of torch first, so sentence-transformers never pulls a CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Benchmark-only packages (GPTCache, profilers), never needed by the tests.
$(BENCH_STAMP): $(STAMP)
	$(BIN)/pip install -q -e '.[dev,bench]' torch==2.13.0
	touch $(BENCH_STAMP)

run: $(STAMP)
	$(BIN)/semantic-cache run

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# End to end through Envoy, backend scaling (memory and Milvus), side by side with GPTCache.
bench: $(BENCH_STAMP)
	$(BIN)/python -m bench.e2e $(BENCH_ARGS)
	$(BIN)/python -m bench.backends
	$(BIN)/python -m bench.gptcache_compare

lint: $(STAMP)
	$(BIN)/ruff check extproc tests bench charts

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
