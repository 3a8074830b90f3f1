import numpy as np
import pytest
import torch

from model.din import Checkpoint
from model.onnx_export import reference
from model.serving import ServingInputs
from service.features import Features
from service.payloads import ScoreResponse

USER = {"age": 25, "gender": "F"}
CONTEXT = {"hour": 20, "weekday": 2}


def post_events(client, user_id, items):
    events = [
        {"user_id": user_id, "item_id": i, "category_id": c, "ts": 1000 + k} for k, (i, c) in enumerate(items)
    ]
    r = client.post("/events", json={"events": events})
    assert r.status_code == 200, r.text
    return r.json()


def score(client, user_id, candidates, **kw):
    body = {"user_id": user_id, "candidates": candidates, "user": USER, "context": CONTEXT, **kw}
    r = client.post("/score", json=body)
    assert r.status_code == 200, r.text
    ScoreResponse.model_validate_json(r.content, strict=False)  # the documented response schema holds
    return r.json()


def test_service_scores_equal_the_torch_model_for_the_same_history(client, trained):
    history = [(i, i % 50) for i in (5, 17, 33, 5, 120)]
    post_events(client, "u1", history)
    candidates = [{"item_id": i, "category_id": i % 50} for i in range(0, 400, 7)] + [
        {"item_id": 10**9, "category_id": 77777}  # unknown ids score too
    ]
    got = score(client, "u1", candidates)
    assert got["history_length"] == 5 and not got["degraded"] and got["model_version"] == "test-v1"

    ckpt = Checkpoint.load(str(trained[0]))
    space = ckpt.space
    hist_rows = [{"item_id": i, "category_id": c} for i, c in history]
    x = ServingInputs(
        torch.from_numpy(Features(space).encode_rows([USER], space.schema.profile)),
        torch.from_numpy(Features(space).encode_rows([CONTEXT], space.schema.context)),
        torch.from_numpy(Features(space).encode_rows(hist_rows, space.schema.behavior))[None],
        torch.tensor([5]),
        torch.from_numpy(Features(space).encode_rows(candidates, space.schema.behavior)),
        torch.zeros(len(candidates), dtype=torch.long),
    )
    expected, _ = reference(ckpt.build(), x)
    by_item = {it["item_id"]: it["ctr"] for it in got["items"]}
    np.testing.assert_allclose([by_item[c["item_id"]] for c in candidates], expected, atol=1e-5, rtol=0)
    ctrs = [it["ctr"] for it in got["items"]]
    assert ctrs == sorted(ctrs, reverse=True) and [it["rank"] for it in got["items"]] == list(
        range(1, len(ctrs) + 1)
    )


def test_a_posted_behaviour_changes_the_next_score_of_a_related_candidate(client):
    candidate = [{"item_id": 42, "category_id": 42 % 50}]
    before = score(client, "u2", candidate, explain=True)
    assert before["history_length"] == 0 and before["items"][0]["behaviors"] == []
    post_events(client, "u2", [(42, 42 % 50)])
    after = score(client, "u2", candidate, explain=True)
    assert after["history_length"] == 1
    assert after["items"][0]["ctr"] != pytest.approx(before["items"][0]["ctr"], abs=1e-6)
    (behavior,) = after["items"][0]["behaviors"]
    assert (
        behavior["item_id"] == 42 and behavior["category_id"] == 42 % 50 and np.isfinite(behavior["weight"])
    )


def test_explain_lists_the_behaviours_that_moved_the_ctr_most_either_way(client, settings):
    post_events(client, "u3", [(i, i % 50) for i in range(1, 12)])
    got = score(
        client, "u3", [{"item_id": 3, "category_id": 3}, {"item_id": 4, "category_id": 4}], explain=True
    )
    assert [b["item_id"] for b in got["history"]] == list(range(1, 12))  # as scored, oldest first
    for item in got["items"]:
        assert len(item["attention"]) == len(item["influence"]) == 11
        top = item["behaviors"]
        sizes = [abs(b["influence"]) for b in top]
        assert len(top) == settings.explain_top and sizes == sorted(sizes, reverse=True)
        assert sizes[0] == max(abs(v) for v in item["influence"])
        for b in top:  # each listed behaviour carries its own entries of the full arrays
            j = b["item_id"] - 1
            assert (b["weight"], b["influence"]) == (item["attention"][j], item["influence"][j])


def test_a_behaviours_influence_is_the_ctr_change_of_the_same_history_without_it(client):
    history = [(i, i % 50) for i in (8, 21, 34, 55, 89)]
    candidates = [{"item_id": 21, "category_id": 21}, {"item_id": 13, "category_id": 13}]
    post_events(client, "full", history)
    got = score(client, "full", candidates, explain=True)
    for j in range(len(history)):  # another user with the same history but behaviour j
        post_events(client, f"without-{j}", history[:j] + history[j + 1 :])
        without = {it["item_id"]: it["ctr"] for it in score(client, f"without-{j}", candidates)["items"]}
        for item in got["items"]:
            assert item["influence"][j] == pytest.approx(item["ctr"] - without[item["item_id"]], abs=1e-6)


def test_history_is_capped_to_the_newest_behaviours(client, settings):
    post_events(client, "u4", [(i, i % 50) for i in range(settings.history_cap + 30)])
    got = score(client, "u4", [{"item_id": 1, "category_id": 1}], explain=True)
    assert got["history_length"] == 20  # the model's max_history; Redis keeps history_cap
    assert min(b["item_id"] for b in got["items"][0]["behaviors"]) >= settings.history_cap + 30 - 20


def test_profile_comes_from_redis_when_the_request_has_none(client):
    candidates = [{"item_id": 9, "category_id": 9}]
    r = client.post("/profile", json={"user_id": "u5", "profile": {"age": 45, "gender": "M"}})
    assert r.status_code == 204
    from_redis = client.post(
        "/score", json={"user_id": "u5", "candidates": candidates, "context": CONTEXT}
    ).json()
    explicit = client.post(
        "/score",
        json={
            "user_id": "u5",
            "candidates": candidates,
            "context": CONTEXT,
            "user": {"age": 45, "gender": "M"},
        },
    ).json()
    assert from_redis["items"][0]["ctr"] == pytest.approx(explicit["items"][0]["ctr"], abs=1e-7)


def test_empty_duplicate_and_top_k_have_defined_answers(client):
    assert score(client, "u6", [])["items"] == []
    dup = [
        {"item_id": 7, "category_id": 7},
        {"item_id": 7, "category_id": 7},
        {"item_id": 8, "category_id": 8},
    ]
    assert [it["item_id"] for it in score(client, "u6", dup)["items"]] in ([7, 8], [8, 7])
    assert len(score(client, "u6", dup, top_k=1)["items"]) == 1
    assert len(score(client, "u6", dup, top_k=10_000)["items"]) == 2
