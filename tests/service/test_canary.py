"""Two versions at once: users routed to their arm, hot swap for each, promotion without a load,
abort, a canary that fails to load, shadow mode, and per-version metrics."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient

from contracts.keys import Keys, decode_feedback
from contracts.repository import ModelRepository
from service.main import create_app
from tests.helpers import REDIS_URL, flip_a_byte
from tests.service.conftest import changed
from tests.service.test_model_slot import AUTH, TOKEN, publish_copy

CANDIDATES = [{"item_id": i, "category_id": i % 7} for i in range(1, 30)]
USERS = [*range(40), *(f"u{i}" for i in range(40))]


@pytest.fixture
def repo(models, trained_other, tmp_path) -> ModelRepository:
    r = ModelRepository(models)
    publish_copy(r, trained_other, "test-v2", tmp_path)
    return r


@pytest.fixture
def admin(settings):
    with TestClient(create_app(changed(settings, admin_token=TOKEN))) as c:
        yield c


def reload(client: TestClient) -> dict:
    r = client.post("/admin/reload", headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def versions(client: TestClient) -> dict:
    out = {}
    for u in USERS:
        r = client.post("/score", json={"user_id": u, "candidates": CANDIDATES})
        assert r.status_code == 200, r.text
        out[u] = r.json()["model_version"]
    return out


def test_each_user_is_answered_by_the_version_of_their_arm(admin, repo):
    repo.start_canary("test-v2", 40, salt="exp-1")
    assert reload(admin) | {"at": None} == {
        "result": "loaded", "serving": "test-v1", "attempted": "test-v1", "error": None, "at": None,
        "canary": "test-v2",
    }  # fmt: skip
    spec = repo.pointer().canary
    served = versions(admin)
    assert served == {u: "test-v2" if spec.takes(u) else "test-v1" for u in USERS}
    assert 0 < sum(v == "test-v2" for v in served.values()) < len(USERS)
    assert versions(admin) == served  # and again: nobody changes arm
    status = admin.get("/model").json()
    assert status["version"] == "test-v1" and status["canary"] == spec.to_json()

    metrics = admin.get("/metrics").text
    n2 = 2 * sum(v == "test-v2" for v in served.values())
    assert f'din_scored_total{{version="test-v2"}} {float(n2)}' in metrics
    assert f'din_impressions_served_total{{version="test-v2"}} {float(n2 * len(CANDIDATES))}' in metrics
    assert (
        'din_model_info{version="test-v1"} 1.0' in metrics
        and 'din_model_info{version="test-v2"} 1.0' in metrics
    )


def test_a_click_counts_for_the_arm_of_its_user(admin, repo):
    repo.start_canary("test-v2", 50, salt="clicks")
    reload(admin)
    spec = repo.pointer().canary
    events = [{"user_id": u, "item_id": 3, "category_id": 3, "request_id": f"r{u}"} for u in USERS]
    assert admin.post("/events", json={"events": events}).status_code == 200
    in_canary = sum(spec.takes(u) for u in USERS)
    metrics = admin.get("/metrics").text
    assert f'din_clicks_total{{version="test-v2"}} {float(in_canary)}' in metrics
    assert f'din_clicks_total{{version="test-v1"}} {float(len(USERS) - in_canary)}' in metrics


def test_promotion_hands_the_warm_canary_over_and_abort_ends_it(admin, repo):
    repo.start_canary("test-v2", 50)
    reload(admin)
    canary_runner = admin.app.state.services.models.canary.runner
    repo.promote()
    assert reload(admin)["serving"] == "test-v2"
    assert admin.app.state.services.models.runner is canary_runner  # promoted, not loaded again
    assert set(versions(admin).values()) == {"test-v2"}

    repo.start_canary("test-v1", 30)
    reload(admin)
    assert set(versions(admin).values()) == {"test-v1", "test-v2"}
    repo.abort()
    report = reload(admin)
    assert (report["serving"], report["canary"]) == ("test-v2", None)
    assert set(versions(admin).values()) == {"test-v2"} and admin.get("/model").json()["canary"] is None


def test_a_new_split_needs_no_load_and_a_broken_canary_leaves_stable_serving_everyone(
    admin, repo, trained, tmp_path
):
    repo.start_canary("test-v2", 10, salt="a")
    reload(admin)
    runner = admin.app.state.services.models.canary.runner
    repo.start_canary("test-v2", 90, salt="b")
    assert reload(admin)["result"] == "loaded" and admin.app.state.services.models.canary.runner is runner
    assert admin.app.state.services.models.canary.spec.percent == 90

    publish_copy(repo, trained[1], "test-broken", tmp_path, edit=flip_a_byte)
    repo.start_canary("test-broken", 50)
    r = admin.post("/admin/reload", headers=AUTH)
    assert r.status_code == 409 and r.json()["attempted"] == "test-broken" and r.json()["canary"] is None
    assert set(versions(admin).values()) == {"test-v1"}
    assert "din_model_reload_failing 1.0" in admin.get("/metrics").text


def test_shadow_mode_serves_stable_and_logs_the_canarys_own_ctrs(settings, repo, tmp_path):
    repo.start_canary("test-v2", 100, mode="shadow")
    with TestClient(create_app(settings)) as c:  # the canary is loaded at start-up too
        body = c.post("/score", json={"user_id": 7, "candidates": CANDIDATES, "top_k": 5}).json()
        assert body["model_version"] == "test-v1"
        records = wait_for_stream(Keys(settings.key_prefix).shadow()[0], 1)
    (rec,) = records
    assert (rec["request_id"], rec["model_version"], rec["served_version"]) == (
        body["request_id"],
        "test-v2",
        "test-v1",
    )
    assert [x["item_id"] for x in rec["candidates"]] == [x["item_id"] for x in body["items"]]
    assert rec["served_ctr"] == [x["ctr"] for x in body["items"]]
    # The canary's CTRs are its own: what it answers when it is the current version.
    only_v2 = ModelRepository(tmp_path / "only-v2")
    only_v2.set_current(only_v2.publish(repo.path("test-v2")))
    with TestClient(create_app(changed(settings, models=only_v2.root))) as c2:
        direct = c2.post("/score", json={"user_id": 7, "candidates": rec["candidates"]}).json()
    by_item = {x["item_id"]: x["ctr"] for x in direct["items"]}
    expected = [by_item[x["item_id"]] for x in rec["candidates"]]
    assert np.abs(np.array(rec["ctr"]) - np.array(expected)).max() <= 1e-6
    assert not np.allclose(rec["ctr"], rec["served_ctr"])  # a different model: the comparison has content


def wait_for_stream(key: str, n: int) -> list[dict]:
    r = redis.Redis.from_url(REDIS_URL)
    entries: Any = []
    for _ in range(100):
        entries = r.xrange(key)
        if len(entries) >= n:
            return [decode_feedback(f[b"r"]) for _, f in entries]
        time.sleep(0.05)
    raise AssertionError(f"{key}: {len(entries)} entries, wanted {n}")
