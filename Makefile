# One place for the commands the README, CI and developers use.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install lint test test-fast test-containers quickstart redeploy rollback reliability bench-train bench-model bench-service clean

$(BIN)/python:
	$(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# A stamp: reinstalls only when pyproject.toml changes (the install is editable, so code needs none).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	@echo "== installing the project and its dependencies into $(VENV) (the first time takes a few minutes)"
	$(BIN)/pip install --progress-bar on -e '.[train,dev]'
	touch $@

install: $(VENV)/.installed

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Everything but the container build, as CI runs it (then test-containers).
test: lint
	$(BIN)/pytest -q -m "not containers"

# Builds both images and runs the compose stack for real (podman; as root). Minutes from scratch,
# fast once the image layers are cached. Wall times go to runs/test-containers.json.
test-containers: install
	bash scripts/ensure_podman.sh
	$(BIN)/pytest -q -s -m containers tests/containers

# The inner loop: skips the live-server tests marked slow.
test-fast: install
	$(BIN)/pytest -q -m "not slow"

# Serves a DIN on 127.0.0.1:8000 (trains a small one on SYNTHETIC data first if none is published).
# HOST, PORT and WORKERS change where and how (scripts/quickstart.sh).
quickstart:
	bash scripts/quickstart.sh

# Retrain, gate, publish and roll out: make redeploy ARGS="--instance http://127.0.0.1:8000 --data synthetic"
redeploy: install
	$(BIN)/python scripts/redeploy.py $(ARGS)

rollback: install
	$(BIN)/python scripts/redeploy.py --rollback $(ARGS)

reliability: install
	$(BIN)/python scripts/reliability.py all --readme docs/benchmarks.md

bench-train: install
	$(BIN)/python scripts/bench_train.py --data-root ../shared/data --datasets amazon-sports movielens-100k \
		--out runs/bench_train --readme docs/benchmarks.md

# RUN: any run trained with the default settings (make bench-train writes this one).
RUN ?= runs/bench_train/amazon-sports/DIN_default
# Trained with the default settings when RUN does not exist yet (needs ../shared/data).
$(RUN)/ckpt.pt: | install
	$(BIN)/python -m model.train --data ../shared/data/amazon-sports --out $(RUN)

bench-model: install $(RUN)/ckpt.pt
	$(BIN)/python scripts/bench_model.py --run $(RUN) --tune \
		--threads 1 2 --json runs/bench_model.json --png runs/bench_model.png --readme docs/benchmarks.md

bench-service: install $(RUN)/ckpt.pt
	@command -v wrk >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q wrk; } || \
		{ echo "bench-service needs wrk (apt-get install wrk)"; exit 1; }
	$(BIN)/python scripts/bench_service.py --run $(RUN) --json runs/bench_service.json --png runs/bench_service.png \
		--readme docs/benchmarks.md

clean:
	rm -rf $(VENV) runs .mypy_cache .ruff_cache .pytest_cache
