"""The compose stack for real: both images built from the Dockerfile, `compose up` from the unchanged
docker-compose.yml, then scoring, events, retrain, redeploy and rollback through the containers.

Rootful podman with podman-compose stands in for Docker (the only engine these machines run); the
stack fixture in conftest.py builds, starts and tears it all down. ``make test-containers`` runs
this module; ``make test`` leaves it out.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from contracts.repository import ModelRepository
from service.main import create_app
from service.settings import Settings
from tests.containers.conftest import README, ROOT, Stack
from tests.helpers import REDIS_URL, redis_prefix

pytestmark = pytest.mark.containers

DEMO_VERSION = "demo-synthetic"  # what the Dockerfile's demo-model stage exports


def readme_score_example() -> dict:
    """The request body the README shows for POST /score."""
    text = README.read_text()
    section = text[text.index("**`POST /score`**") :]
    return json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))  # type: ignore[union-attr]


def test_api_container_runs_as_uid_10001_on_a_read_only_root_without_torch(stack: Stack):
    assert stack.exec("api", "id", "-u").strip() == "10001"
    assert stack.inspect("api")["HostConfig"]["ReadonlyRootfs"] is True
    probe = "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('onnxruntime') is not None)"
    assert stack.exec("api", "python", "-c", probe).split() == ["None", "True"]
    touch = stack.exec("api", "sh", "-c", "touch /app/x 2>&1 || echo refused", check=False)
    assert "refused" in touch
    assert stack.exec("api", "printenv", "ORT_DISABLE_TELEMETRY").strip() == "1"


def test_healthcheck_passes_and_the_readme_score_example_is_answered(stack: Stack):
    assert stack.healthcheck("api")  # the image's own HEALTHCHECK command, run as the engine would
    assert stack.get("/readyz") == {"model": DEMO_VERSION, "redis": "ok"}
    body = stack.post("/score", readme_score_example())
    assert body["model_version"] == DEMO_VERSION
    ctrs = [item["ctr"] for item in body["items"]]
    assert len(ctrs) == 2 and ctrs == sorted(ctrs, reverse=True) and all(0 < p < 1 for p in ctrs)
    assert all("behaviors" in item for item in body["items"])  # the example asks explain: true


def test_the_published_api_needs_the_key_made_with_the_documented_command(stack: Stack):
    with pytest.raises(AssertionError, match="401"):
        stack.request("POST", "/score", readme_score_example(), key=None)
    with pytest.raises(AssertionError, match="401"):
        stack.request("POST", "/events", {"events": []}, key="web.wrong")
    assert stack.post("/score", readme_score_example())["items"]
    # without keys, compose refuses to start the API and names the command that makes one
    env = {k: v for k, v in stack.env.items() if k != "DIN_API_KEYS"}
    done = subprocess.run([stack.compose_bin, "-p", "din-ctr-nokeys", "config"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0 and "python3 -m jobs.api_keys new" in done.stdout + done.stderr


def test_an_event_posted_to_the_container_shows_up_in_the_next_score(stack: Stack):
    user = "container-user-events"
    before = stack.post("/score", {"user_id": user, "candidates": [{"item_id": 5, "category_id": 3}]})
    events = [{"user_id": user, "item_id": 10 + i, "category_id": 2, "ts": 1764000000 + i} for i in range(3)]
    assert stack.post("/events", {"events": events})["appended"] == 3
    after = stack.post(
        "/score", {"user_id": user, "candidates": [{"item_id": 5, "category_id": 3}], "explain": True}
    )
    assert (before["history_length"], after["history_length"]) == (0, 3)
    assert after["items"][0]["ctr"] != before["items"][0]["ctr"]
    assert {b["item_id"] for b in after["items"][0]["behaviors"]} <= {10, 11, 12}


def test_the_container_scores_the_same_ctrs_as_the_same_bundle_outside_it(stack: Stack, tmp_path: Path):
    bundle = stack.copy_out("api", f"/models/{DEMO_VERSION}", tmp_path / DEMO_VERSION)
    repo = ModelRepository(tmp_path / "models")
    repo.set_current(repo.publish(bundle))
    user = "container-user-parity"
    events = [
        {"user_id": user, "item_id": i * 7, "category_id": i % 5, "ts": 1764000000 + i} for i in range(12)
    ]
    request = readme_score_example() | {"user_id": user, "top_k": None, "explain": False}
    request["candidates"] = [{"item_id": i, "category_id": i % 9} for i in range(40)]

    stack.post("/events", {"events": events})
    inside = stack.post("/score", request)
    with redis_prefix() as prefix:
        settings = Settings(models=repo.root, redis_url=REDIS_URL, key_prefix=prefix)
        with TestClient(create_app(settings)) as host:
            assert host.post("/events", json={"events": events}).status_code == 200
            outside = host.post("/score", json=request).json()

    assert inside["model_version"] == outside["model_version"] == DEMO_VERSION
    assert inside["history_length"] == outside["history_length"] == len(events)
    by_item = {i["item_id"]: i["ctr"] for i in outside["items"]}
    a = np.array([i["ctr"] for i in inside["items"]])
    b = np.array([by_item[i["item_id"]] for i in inside["items"]])
    assert len(a) == 40 and np.abs(a - b).max() <= 1e-6


def test_the_trainer_retrains_redeploys_and_rolls_back_through_compose(stack: Stack):
    assert stack.get("/model")["version"] == DEMO_VERSION
    # The README's own retrain command, against the demo model the image seeded.
    done = stack.run_trainer("--data", "synthetic", "--epochs", "5")
    assert done.returncode == 0, done.stdout[-3000:]
    new = stack.get("/model")["version"]
    assert new != DEMO_VERSION and f"serving {new}" in done.stdout, done.stdout[-3000:]
    print("\n".join(line for line in done.stdout.splitlines() if "gate" in line.lower()))
    warnings = [line for line in done.stdout.splitlines() if re.search(r"warn", line, re.I)]
    assert not warnings, warnings  # e.g. matplotlib's, for uid 10001 without a home
    assert stack.post("/score", readme_score_example())["model_version"] == new

    done = stack.run_trainer("--rollback")
    assert done.returncode == 0, done.stdout[-3000:]
    assert stack.get("/model")["version"] == DEMO_VERSION
    assert stack.post("/score", readme_score_example())["model_version"] == DEMO_VERSION


def test_behaviours_in_redis_survive_compose_down_and_up(stack: Stack):
    user = "container-user-durable"
    events = [{"user_id": user, "item_id": 40 + i, "category_id": 1, "ts": 1764000100 + i} for i in range(4)]
    stack.post("/events", {"events": events})
    stack.down()  # keeps the volumes: redis-server writes its AOF on the redis-data volume
    stack.up()
    body = stack.post("/score", {"user_id": user, "candidates": [{"item_id": 5, "category_id": 3}]})
    assert body["history_length"] == 4 and body["degraded"] is False


def test_stack_logs_carry_no_warnings(stack: Stack):
    """Warnings a real run showed once: matplotlib's config dir, onnxruntime on a read-only root."""
    log = stack.logs("api")
    assert not re.search(r"warn", log, re.I), [line for line in log.splitlines() if "warn" in line.lower()]


def test_compose_stop_drains_the_api_gracefully(stack: Stack):
    stack.compose("stop", "api")
    state = stack.inspect("api")["State"]
    log = stack.logs("api")
    assert state["ExitCode"] == 0, log[-3000:]
    order = [log.find(line) for line in ("not ready any more", "Shutting down", "shutdown complete")]
    assert -1 not in order and order == sorted(order), log[-3000:]
