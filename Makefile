# One place for the commands the README, CI and developers use.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint test quickstart bench-train clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

install: $(BIN)/python
	$(BIN)/pip install --quiet -e '.[train,dev]'

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -q

# Trains a small DIN on the synthetic generator (seconds) and prints its metrics.
quickstart: install
	$(BIN)/python -m model.train --data synthetic --model din --out runs/quickstart --epochs 3
	@cat runs/quickstart/metrics.json

bench-train: install
	$(BIN)/python scripts/bench_train.py --data-root ../shared/data --out runs/bench_train

clean:
	rm -rf $(VENV) runs .mypy_cache .ruff_cache .pytest_cache
