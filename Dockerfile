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
    ORT_DISABLE_TELEMETRY=1 \
    PATH=/opt/venv/bin:$PATH
RUN useradd --system --uid 10001 --user-group --no-create-home din \
    && mkdir -p /models /app/runs \
    && chown din:din /models /app/runs
WORKDIR /app

# --- API dependencies in a virtualenv, copied alone into the runtime image ---
FROM base AS api-build
COPY pyproject.toml README.md ./
# The service imports only the shared contracts below it: no training code in the serving image.
COPY contracts ./contracts
COPY service ./service
# The API image copies this venv alone: it needs neither pip nor the packages' own tests and test data.
RUN python -m venv /opt/venv && pip install --no-cache-dir . \
    && pip uninstall --yes pip setuptools \
    && site=/opt/venv/lib/python3.11/site-packages \
    && rm -rf "$site/onnx/backend/test" \
    && find "$site" -depth -type d -path "$site/numpy/*" -name tests -exec rm -rf {} +

# --- trainer: the same packages plus the train extra with the CPU build of torch ---
FROM base AS trainer
COPY pyproject.toml README.md ./
COPY contracts ./contracts
COPY model ./model
COPY jobs ./jobs
# TORCH_INDEX: where the CPU build of torch comes from. A package index URL (the default, PyTorch's
# CPU index), or a directory of wheels mounted into the build, for machines that cannot reach it:
#   podman build --volume /opt/wheels:/opt/wheels:ro --build-arg TORCH_INDEX=/opt/wheels ...
# The exact +cpu pin makes a build that cannot find the CPU wheel fail instead of pulling the
# multi-GB CUDA build from PyPI. The train extra's other pins are the ranges in pyproject.toml.
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
# hadolint ignore=DL3013,SC2086
RUN python -m venv /opt/venv \
    && if [ -d "$TORCH_INDEX" ]; then from="--find-links $TORCH_INDEX"; else from="--index-url $TORCH_INDEX"; fi \
    && pip install --no-cache-dir $from torch==2.13.0+cpu \
    && pip install --no-cache-dir ".[train]"
COPY scripts ./scripts
USER 10001:10001
# uid 10001 has no home: matplotlib's cache goes to /tmp.
ENV DIN_MODELS=/models \
    MPLCONFIGDIR=/tmp/matplotlib
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
