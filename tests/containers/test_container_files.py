"""Static checks of the Dockerfile and docker-compose.yml, which need no container engine: they lint
and validate, and every command, path, target and setting they name exists and is the one the
tests exercise. test_compose_stack.py runs them for real."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from devtools.liveserver import SERVE_COMMAND
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    path = shutil.which(name, path=str(BIN)) or shutil.which(name)
    assert path, f"{name} is a dev dependency: pip install -e '.[dev]'"
    return path


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage, continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, args = line.partition(" ")
        if op.upper() == "FROM":
            current = stages.setdefault(args.split()[-1], [])
        current.append((op.upper(), args.strip()))
    return stages


def instructions(stage: str, op: str) -> list[str]:
    return [args for o, args in dockerfile_stages()[stage] if o == op]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_dockerfile_passes_hadolint():
    done = subprocess.run([tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_file_validates_against_the_compose_spec():
    cmd = [tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_api_image_runs_the_tested_serve_command_as_non_root_without_torch():
    cmd = json.loads(instructions("api", "CMD")[0])  # exec form, so uvicorn is PID 1
    assert cmd[: len(SERVE_COMMAND)] == SERVE_COMMAND
    assert instructions("api", "USER") == ["10001:10001"]
    for stage in ("base", "api-build", "api"):
        assert "torch" not in json.dumps(dockerfile_stages()[stage]), stage
    health = instructions("api", "HEALTHCHECK")[0]
    assert "http://127.0.0.1:8000/healthz" in health and cmd[cmd.index("--port") + 1] == "8000"


def test_trainer_image_runs_the_tested_redeploy_script_with_the_cpu_torch_pin():
    entry = json.loads(instructions("trainer", "ENTRYPOINT")[0])
    assert entry[:2] == ["python", "scripts/redeploy.py"] and (ROOT / entry[1]).is_file()
    assert f'"{entry[1]}"' in (ROOT / "tests/jobs/test_redeploy.py").read_text()  # what the tests run
    run = " ".join(instructions("trainer", "RUN"))
    assert "torch==2.13.0+cpu" in run  # exact: without +cpu, PyPI would serve the CUDA build
    assert "TORCH_INDEX=https://download.pytorch.org/whl/cpu" in instructions("trainer", "ARG")


def test_every_path_the_dockerfile_copies_exists_and_stays_in_the_build_context():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for stage in dockerfile_stages():
        for args in instructions(stage, "COPY"):
            if "--from=" in args:
                continue
            *sources, _ = args.split()
            for src in sources:
                assert (ROOT / src).exists(), src
                assert src.split("/")[0] not in ignored, f"{src} is excluded by .dockerignore"


def test_compose_services_match_the_images_and_settings(compose):
    stages = dockerfile_stages()
    services = compose["services"]
    settings = {f"DIN_{name.upper()}" for name in Settings.model_fields}
    for name in ("api", "trainer"):
        assert services[name]["build"]["target"] in stages
    api = services["api"]
    assert set(api["environment"]) <= settings, set(api["environment"]) - settings
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["restart"] and api["stop_grace_period"]
    assert "models:/models" in api["volumes"] and api["environment"]["DIN_MODELS"] == "/models"

    trainer = services["trainer"]
    assert trainer["profiles"] == ["train"] and "models:/models" in trainer["volumes"]
    assert trainer["environment"]["DIN_INSTANCES"] == "http://api:8000"
    # experiment.py and the exporter read the impression and click streams the API writes
    assert trainer["environment"]["DIN_REDIS_URL"] == api["environment"]["DIN_REDIS_URL"]

    redis = services["redis"]
    assert redis["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert redis["command"][redis["command"].index("--appendonly") + 1] == "yes"  # history survives restarts
    assert "redis-data:/data" in redis["volumes"]


def test_quickstart_serves_with_the_same_command():
    quickstart = (ROOT / "scripts/quickstart.sh").read_text()
    assert " ".join(SERVE_COMMAND[1:]) in quickstart


def test_compose_file_works_with_docker_compose_1_29_and_its_default_mounts_exist(compose):
    assert "name" not in compose  # docker-compose 1.29 refuses a top-level name
    for service in compose["services"].values():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            default = re.fullmatch(r"\$\{\w+:-(.+)\}", source)
            if default or source.startswith("."):
                path = default.group(1) if default else source
                assert (ROOT / path).is_dir(), f"{volume}: {path} is not in the repo"


def test_quickstart_binds_loopback_by_default_and_checks_the_port_before_installing():
    quickstart = (ROOT / "scripts/quickstart.sh").read_text()
    assert 'HOST="${HOST:-127.0.0.1}"' in quickstart and '--host "$HOST"' in quickstart
    assert quickstart.index("is not free") < quickstart.index("make install")


def test_compose_needs_api_keys_and_says_how_to_make_one(compose):
    """The API is published on a port: it starts only with keys (python -m service refuses
    otherwise), so compose refuses to interpolate without them and names the command."""
    value = compose["services"]["api"]["environment"]["DIN_API_KEYS"]
    match = re.fullmatch(r"\$\{DIN_API_KEYS:\?(.+)\}", value)
    assert match and "python3 -m jobs.api_keys new" in match.group(1)
    assert "DIN_ALLOW_UNAUTHENTICATED" not in compose["services"]["api"]["environment"]
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    # the command in the message writes the .env line compose reads
    command = match.group(1).split("make one with ", 1)[1].split()
    assert command[:3] == ["python3", "-m", "jobs.api_keys"] and "--env" in command
