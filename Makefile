# Set-up and test targets. Every target creates the virtual environment on
# first use, so a fresh clone needs nothing but Python 3.10+ and make.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch is pinned to the 2.13.0 CPU build; installing it first keeps pip
	# from resolving a CUDA build through another package's requirement.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/harness study --backbones all --strategies all --preset quick --jobs 2 --name demo
	$(BIN)/harness report results/demo

lint: $(STAMP)
	$(BIN)/ruff check harness backbones strategies tests bench

test: $(STAMP) lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python bench/bench_engine.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
