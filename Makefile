# Two commands for a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch from your pip index (PyPI's Linux wheel is a CUDA build). CPU-only Linux machines:
# TORCH_INDEX=https://download.pytorch.org/whl/cpu; another CUDA: TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# The demo's seeds: `make demo SEEDS=0,1,2` gives intervals and tests (about 3x the time).
SEEDS ?= 0

.PHONY: setup demo test test-fast lint bench

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/python train.py -m experiment=demo variant=baseline,gelu_bias,sep_qkv,qk_scale seed=$(SEEDS) overwrite=true
	$(BIN)/python evaluate.py experiment=demo heatmap_layers=[3]

# The whole suite: the fast tests, then the slow ones (subprocesses of their own: DDP, torchrun,
# notebooks, training), each in one pytest-xdist worker per core. On 2 cores the slow ones take about
# 11 minutes so, 15 in one process: most of their time is one process starting or compiling.
test: setup
	$(BIN)/python -m pytest -q -m "not slow" -n auto
	$(BIN)/python -m pytest -q -m slow -n auto

# All but the tests marked slow (subprocesses, compile, bench, training runs, evaluation): 45-50 s on 2 cores,
# in one pytest-xdist worker per core (one thread each, tests/conftest.py).
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow" -n auto

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/throughput.py
