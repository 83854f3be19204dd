# Two entry points for a fresh machine (see README.md): `make quickstart` and `make test`.
# Both create .venv, install the CPU build of torch first (a bare `torch` requirement would pull a
# multi-GB CUDA build here), then this package with the extras the job needs.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup quickstart test lint bench clean

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev,deepspeed,eval,plot,tensorboard,export]"
	touch $@

setup: $(VENV)/.installed

quickstart: setup
	$(VENV)/bin/spiking-lm quickstart

test: setup
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

bench: setup
	$(PY) scripts/bench_neurons.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
