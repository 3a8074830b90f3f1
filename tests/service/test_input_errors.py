import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.model_slot import StartupError
from service.settings import Settings

OK_CANDIDATE = {"item_id": 1, "category_id": 1}


@pytest.mark.parametrize(
    ("body", "status", "loc"),
    [
        ({"candidates": [OK_CANDIDATE]}, 422, ["body", "user_id"]),
        ({"user_id": 1, "candidates": [{"category_id": 1}]}, 422, ["body", "candidates", 0, "item_id"]),
        (
            {"user_id": 1, "candidates": [OK_CANDIDATE, {"item_id": 2}]},
            422,
            ["body", "candidates", 1, "category_id"],
        ),
        (
            {"user_id": 1, "candidates": [{"item_id": 2, "category_id": "x"}]},
            422,
            ["body", "candidates", 0, "category_id"],
        ),
        (
            {"user_id": 1, "candidates": [{"item_id": [1], "category_id": 1}]},
            422,
            ["body", "candidates", 0, "item_id"],
        ),
        ({"user_id": 1, "candidates": [OK_CANDIDATE] * 301}, 422, ["body", "candidates"]),
        ({"user_id": 1, "candidates": [OK_CANDIDATE], "top_k": 0}, 422, ["body", "top_k"]),
        (
            {"user_id": 1, "candidates": [OK_CANDIDATE], "context": {"hour": 25}},
            422,
            ["body", "context", "hour"],
        ),
        (
            {"user_id": 1, "candidates": [OK_CANDIDATE], "context": {"weekday": -1}},
            422,
            ["body", "context", "weekday"],
        ),
        (
            {"user_id": 1, "candidates": [OK_CANDIDATE], "user": {"gender": 1}},
            422,
            ["body", "user", "gender"],
        ),
        (
            {"user_id": 1, "candidates": [OK_CANDIDATE], "context": {"hour": "noon"}},
            422,
            ["body", "context", "hour"],
        ),
        ({"user_id": 1, "candidates": "all"}, 422, ["body", "candidates"]),
    ],
)
def test_bad_score_input_is_a_4xx_naming_the_field(client, body, status, loc):
    r = client.post("/score", json=body)
    assert r.status_code == status, r.text
    assert any(d["loc"][: len(loc)] == loc for d in r.json()["detail"]), r.json()


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"events": []}, ["body", "events"]),
        ({"events": [{"user_id": 1, "item_id": 2}]}, ["body", "events", 0, "category_id"]),
        (
            {"events": [{"user_id": 1, "item_id": 2, "category_id": 3, "ts": "yesterday"}]},
            ["body", "events", 0, "ts"],
        ),
        ({"events": [{"item_id": 2, "category_id": 3}]}, ["body", "events", 0, "user_id"]),
        (
            {"events": [{"user_id": 1, "item_id": 2, "category_id": 3, "note": {"x": 1}}]},
            ["body", "events", 0, "note"],
        ),
    ],
)
def test_bad_events_are_a_422_naming_the_field_and_write_nothing(client, settings, body, loc):
    r = client.post("/events", json=body)
    assert r.status_code == 422, r.text
    assert any(d["loc"][: len(loc)] == loc for d in r.json()["detail"]), r.json()
    assert (
        client.post("/score", json={"user_id": 1, "candidates": [OK_CANDIDATE]}).json()["history_length"] == 0
    )


def test_a_batch_with_one_bad_event_writes_none_of_it(client):
    events = [
        {"user_id": 1, "item_id": 2, "category_id": 3},
        {"user_id": 1, "item_id": 4, "category_id": "c"},
    ]
    assert client.post("/events", json={"events": events}).status_code == 422
    assert (
        client.post("/score", json={"user_id": 1, "candidates": [OK_CANDIDATE]}).json()["history_length"] == 0
    )


def test_malformed_json_and_oversized_bodies_are_refused(client, settings):
    for raw in (b"{not json", b"\x7f\xbd"):  # the second is not even UTF-8 (found by fuzzing)
        r = client.post("/score", content=raw, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body"], r.text
    big = b'{"user_id": 1, "candidates": [' + b'{"item_id": 1, "category_id": 1},' * 70_000 + b"]}"
    r = client.post("/score", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["detail"][0]["loc"] == ["body"]


def test_an_empty_model_repository_fails_at_start_up_with_the_variable_named(tmp_path):
    settings = Settings(models=tmp_path, redis_url="redis://127.0.0.1:6379/15")  # settings read no files
    with (
        pytest.raises(StartupError, match=r"DIN_MODELS.*no current pointer"),
        TestClient(create_app(settings)),
    ):
        pass


def test_a_seed_that_is_not_a_bundle_fails_at_start_up_with_the_variable_named(tmp_path):
    settings = Settings(models=tmp_path / "m", seed_bundle=tmp_path, redis_url="redis://127.0.0.1:6379/15")
    with (
        pytest.raises(StartupError, match=r"DIN_SEED_BUNDLE.*not a model bundle"),
        TestClient(create_app(settings)),
    ):
        pass


def test_a_short_admin_token_fails_at_start_up(models):
    with pytest.raises(ValueError, match="DIN_ADMIN_TOKEN"):
        Settings(models=models, admin_token="short")


def test_unknown_ids_score_as_out_of_vocabulary(client):
    r = client.post(
        "/score", json={"user_id": "never-seen", "candidates": [{"item_id": -5, "category_id": 10**12}]}
    )
    assert r.status_code == 200 and 0 < r.json()["items"][0]["ctr"] < 1


def test_redis_down_scores_degraded_and_refuses_writes(models):
    down = Settings(models=models, redis_url="redis://127.0.0.1:1/0", redis_timeout_ms=50)
    with TestClient(create_app(down)) as client:
        r = client.post("/score", json={"user_id": 1, "candidates": [OK_CANDIDATE]})
        assert r.status_code == 200 and r.json()["degraded"] is True and r.json()["history_length"] == 0
        r = client.post("/events", json={"events": [{"user_id": 1, "item_id": 2, "category_id": 3}]})
        assert r.status_code == 503 and r.headers["retry-after"] and "nothing was written" in r.text
        assert client.get("/readyz").status_code == 503
        assert client.get("/healthz").status_code == 200
        metrics = client.get("/metrics").text
        assert "din_score_degraded_total 1.0" in metrics
        assert "din_redis_breaker_open 1.0" in metrics  # later requests do not each pay a timeout
