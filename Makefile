# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create (or reuse) the virtual environment in $(VENV) and install what they need.
VENV ?= .venv
PYTHON ?= python3
# The CPU build of PyTorch; on a GPU machine, install your own torch into $(VENV) first.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: demo test lint typecheck unit setup clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

setup: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/gandissect render --samples 32 --segmenter toyworld --out results/toyworld
	$(BIN)/gandissect dissect --model toyworld --segmenter toyworld --layer layer4 --layer layer6 \
		--samples 1000 --seed 1 --out results/dissect

lint: $(BIN)/.installed
	$(BIN)/ruff check gandissect segmenters models tests benchmarks app.py

typecheck: $(BIN)/.installed
	$(BIN)/mypy
	$(BIN)/mypy app.py
	$(BIN)/mypy benchmarks

unit: $(BIN)/.installed
	$(BIN)/python -m pytest -q

test: lint typecheck unit

clean:
	rm -rf $(VENV) results .pytest_cache .mypy_cache .ruff_cache
