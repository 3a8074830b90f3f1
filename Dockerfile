# syntax=docker/dockerfile:1
# Targets:
#   api      (default) onnxruntime only, no torch; serves the `current` version of /models
#   trainer  CPU torch; `docker compose run --rm trainer ...` retrains and redeploys into /models
# The API image carries a small demo model (trained at build time on SYNTHETIC data) that it
# publishes into an empty /models, so `docker compose up` serves on a fresh volume.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH
RUN useradd --system --uid 10001 --user-group --no-create-home din \
    && mkdir -p /models /app/runs \
    && chown din:din /models /app/runs
WORKDIR /app

# --- API dependencies in a virtualenv, copied alone into the runtime image ---
FROM base AS api-build
COPY pyproject.toml README.md ./
COPY model ./model
COPY service ./service
RUN python -m venv /opt/venv && pip install --no-cache-dir .

# --- trainer: the same packages plus the train extra with the CPU build of torch ---
FROM base AS trainer
COPY pyproject.toml README.md ./
COPY model ./model
COPY service ./service
# The train extra's pins are the compatible ranges in pyproject.toml.
# hadolint ignore=DL3013
RUN python -m venv /opt/venv \
    && pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
    && pip install --no-cache-dir ".[train]"
COPY scripts ./scripts
USER 10001:10001
ENV DIN_MODELS=/models
ENTRYPOINT ["python", "scripts/redeploy.py", "--work", "/app/runs/redeploy"]
CMD ["--data", "synthetic", "--epochs", "5"]

# --- the demo model the API seeds an empty repository with ---
FROM trainer AS demo-model
RUN python -m model.train --data synthetic --epochs 5 --out /app/runs/demo --no-progress \
    && python -m model.export --run /app/runs/demo --bundle /app/runs/demo-bundle --version demo-synthetic

# --- api: the serving image ---
FROM base AS api
COPY --from=api-build /opt/venv /opt/venv
COPY --from=demo-model --chown=din:din /app/runs/demo-bundle /app/demo-model
ENV DIN_MODELS=/models \
    DIN_SEED_BUNDLE=/app/demo-model
USER 10001:10001
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)"]
# Exec form: the server (uvicorn, through python -m service) is PID 1 and gets the runtime's
# SIGTERM for a graceful shutdown.
CMD ["python", "-m", "service", "--host", "0.0.0.0", "--port", "8000", "--workers", "2", "--timeout-graceful-shutdown", "20"]
