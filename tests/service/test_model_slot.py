"""Hot swap: load -> validate -> warm up -> swap, keeping the old model on any failure."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from contracts.bundle import MANIFEST_FILE
from contracts.repository import ModelRepository
from service.main import create_app
from tests.helpers import drop_a_context_feature, flip_a_byte
from tests.service.conftest import changed

TOKEN = "test-admin-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CANDIDATES = [{"item_id": 1, "category_id": 1}, {"item_id": 2, "category_id": 2}]


def publish_copy(repo: ModelRepository, bundle: Path, version: str, tmp: Path, edit=None) -> str:
    """Publishes the bundle again under another version; ``edit(folder)`` may damage it first."""
    staged = tmp / f"staged-{version}"
    shutil.copytree(bundle, staged)
    manifest = json.loads((staged / MANIFEST_FILE).read_text())
    (staged / MANIFEST_FILE).write_text(json.dumps(manifest | {"version": version}))
    if edit is not None:
        edit(staged)
    return repo.publish(staged)


@pytest.fixture
def admin_client(settings):
    with TestClient(create_app(changed(settings, admin_token=TOKEN))) as c:
        yield c


def score_version(client: TestClient) -> str:
    r = client.post("/score", json={"user_id": 1, "candidates": CANDIDATES})
    assert r.status_code == 200
    return r.json()["model_version"]


def test_admin_endpoints_are_disabled_without_a_configured_token(client):
    r = client.post("/admin/reload", headers=AUTH)
    assert r.status_code == 404 and "DIN_ADMIN_TOKEN" in r.text


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"}, {"X": "y"}])
def test_admin_reload_needs_the_bearer_token(admin_client, headers):
    r = admin_client.post("/admin/reload", headers=headers)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")


def test_reload_swaps_in_the_version_the_pointer_names(admin_client, models, trained, tmp_path):
    repo = ModelRepository(models)
    assert admin_client.post("/admin/reload", headers=AUTH).json()["result"] == "unchanged"
    repo.set_current(publish_copy(repo, trained[1], "test-v2", tmp_path))
    old_scorer = admin_client.app.state.services.models.runner

    r = admin_client.post("/admin/reload", headers=AUTH)

    assert r.status_code == 200 and r.json() | {"at": None} == {
        "result": "loaded",
        "serving": "test-v2",
        "attempted": "test-v2",
        "error": None,
        "at": None,
        "canary": None,
    }
    assert score_version(admin_client) == "test-v2"
    status = admin_client.get("/model").json()
    assert status["version"] == status["pointer"] == status["manifest"]["version"] == "test-v2"
    metrics = admin_client.get("/metrics").text
    assert 'din_model_reloads_total{result="loaded"} 1.0' in metrics
    assert 'din_model_info{version="test-v2"} 1.0' in metrics and "test-v1" not in metrics
    assert old_scorer.version == "test-v1"  # a request that held it is still scored by v1


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (flip_a_byte, "does not match the sha256"),
        (drop_a_context_feature, "space.json disagree"),
    ],
    ids=["corrupt", "wrong-signature"],
)
def test_a_bad_version_keeps_the_old_one_serving_and_reports_why(
    admin_client, models, trained, tmp_path, damage, reason
):
    repo = ModelRepository(models)
    repo.set_current(publish_copy(repo, trained[1], "bad", tmp_path, edit=damage))

    r = admin_client.post("/admin/reload", headers=AUTH)

    assert r.status_code == 409
    body = r.json()
    assert body["result"] == "failed" and body["serving"] == "test-v1" and body["attempted"] == "bad"
    assert reason in body["error"]
    assert score_version(admin_client) == "test-v1"
    status = admin_client.get("/model").json()
    assert status["version"] == "test-v1" and status["pointer"] == "bad"
    assert reason in status["last_reload"]["error"]
    metrics = admin_client.get("/metrics").text
    assert "din_model_reload_failing 1.0" in metrics
    assert 'din_model_reloads_total{result="failed"} 1.0' in metrics

    repo.rollback()  # the operator points back at the serving version: the alarm clears
    assert admin_client.post("/admin/reload", headers=AUTH).json()["result"] == "unchanged"
    assert "din_model_reload_failing 0.0" in admin_client.get("/metrics").text


def test_the_poll_picks_up_a_new_pointer_without_an_admin_call(settings, models, trained, tmp_path):
    repo = ModelRepository(models)
    with TestClient(create_app(changed(settings, model_poll_seconds=0.05))) as client:
        repo.set_current(publish_copy(repo, trained[1], "test-v2", tmp_path))
        deadline = time.monotonic() + 10
        while score_version(client) != "test-v2":
            assert time.monotonic() < deadline, "the poll never swapped in test-v2"
            time.sleep(0.05)
        assert client.get("/model").json()["last_reload"]["result"] == "loaded"


def test_the_poll_does_not_retry_a_failed_version_until_forced(settings, models, trained, tmp_path):
    repo = ModelRepository(models)
    with TestClient(create_app(changed(settings, model_poll_seconds=0.02, admin_token=TOKEN))) as client:
        repo.set_current(publish_copy(repo, trained[1], "bad", tmp_path, edit=flip_a_byte))
        time.sleep(0.5)
        assert 'din_model_reloads_total{result="failed"} 1.0' in client.get("/metrics").text
        assert client.post("/admin/reload", headers=AUTH).status_code == 409
        assert client.post("/admin/reload?force=true", headers=AUTH).json()["result"] == "failed"
        assert 'din_model_reloads_total{result="failed"} 2.0' in client.get("/metrics").text


def test_an_empty_repository_is_seeded_from_the_seed_bundle(settings, trained, tmp_path):
    seeded = changed(settings, models=tmp_path / "empty", seed_bundle=trained[1])
    with TestClient(create_app(seeded)) as client:
        assert score_version(client) == "test-v1"
    assert ModelRepository(tmp_path / "empty").current() == "test-v1"
