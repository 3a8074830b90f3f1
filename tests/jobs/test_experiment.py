"""scripts/experiment.py on a real service's logs: the counts per arm, and --auto's decisions
carried out on the pointer."""

from __future__ import annotations

import json
import random
import time

import pytest
import redis
from fastapi.testclient import TestClient

from contracts.keys import Keys
from contracts.repository import ModelRepository
from jobs.experiment import main
from service.main import create_app
from tests.helpers import REDIS_URL
from tests.service.test_model_slot import publish_copy

CANDIDATES = [{"item_id": i, "category_id": i % 7} for i in range(1, 9)]


@pytest.fixture
def repo(models, trained, tmp_path) -> ModelRepository:
    r = ModelRepository(models)
    publish_copy(r, trained[1], "test-v2", tmp_path)
    return r


def traffic(
    settings, users: int, visits: int, p_click: dict[str, float], seed: int = 0
) -> dict[str, list[int]]:
    """Scores every user ``visits`` times (top 4 of 8) and clicks each served item with the
    probability of the version that served it; returns impressions and clicks per version."""
    rng, seen = random.Random(seed), {"test-v1": [0, 0], "test-v2": [0, 0]}
    with TestClient(create_app(settings)) as c:
        for _ in range(visits):
            for u in range(users):
                body = c.post("/score", json={"user_id": u, "candidates": CANDIDATES, "top_k": 4}).json()
                version = body["model_version"]
                clicks = [i for i in body["items"] if rng.random() < p_click[version]]
                seen[version][0] += len(body["items"])
                seen[version][1] += len(clicks)
                if clicks:
                    events = [{"user_id": u, "item_id": i["item_id"], "category_id": i["category_id"],
                               "request_id": body["request_id"]} for i in clicks]  # fmt: skip
                    assert c.post("/events", json={"events": events}).status_code == 200
        wait_flushed(settings.key_prefix, sum(v[0] for v in seen.values()) // 4)
    return seen


def wait_flushed(prefix: str, answers: int) -> None:
    r = redis.Redis.from_url(REDIS_URL)
    for _ in range(200):
        if r.xlen(Keys(prefix).impressions()[0]) >= answers:
            return
        time.sleep(0.05)
    raise AssertionError("the impression log did not flush")


def run(settings, repo, *args: str) -> int:
    return main(["status", "--models", str(repo.root), "--redis-url", REDIS_URL, "--key-prefix",
                 settings.key_prefix, *args])  # fmt: skip


def test_status_counts_each_arms_impressions_and_clicks_from_the_logs(settings, repo, tmp_path, capsys):
    repo.start_canary("test-v2", 50, salt="count")
    seen = traffic(settings, users=60, visits=3, p_click={"test-v1": 0.2, "test-v2": 0.4})
    assert run(settings, repo, "--json", str(tmp_path / "s.json")) == 0
    out = json.loads((tmp_path / "s.json").read_text())
    assert [out["stable"]["impressions"], out["stable"]["clicks"]] == seen["test-v1"]
    assert [out["canary"]["impressions"], out["canary"]["clicks"]] == seen["test-v2"]
    assert out["stable"]["users"] + out["canary"]["users"] == 60
    assert out["experiment"]["stable"] == "test-v1" and out["experiment"]["canary"]["version"] == "test-v2"
    text = capsys.readouterr().out
    assert "experiment: test-v2 on 50% of users (split" in text and "decision:" in text and "lift" in text


@pytest.mark.parametrize(
    ("p_click", "decision", "current"),
    [
        ({"test-v1": 0.1, "test-v2": 0.45}, "promote", "test-v2"),
        ({"test-v1": 0.45, "test-v2": 0.1}, "abort", "test-v1"),
    ],
)
def test_auto_promotes_a_better_canary_and_aborts_a_worse_one(
    settings, repo, tmp_path, p_click, decision, current
):
    repo.start_canary("test-v2", 50, salt=decision)
    traffic(settings, users=120, visits=4, p_click=p_click)
    assert (
        run(
            settings,
            repo,
            "--auto",
            "--interval",
            "0.1",
            "--timeout",
            "60",
            "--json",
            str(tmp_path / "a.json"),
        )
        == 0
    )
    pointer = repo.pointer()
    assert (pointer.version, pointer.canary) == (current, None)
    assert json.loads((tmp_path / "a.json").read_text())["decision"] == decision


def test_auto_ends_an_even_experiment_at_its_maximum_as_no_difference(settings, repo, tmp_path, capsys):
    repo.start_canary("test-v2", 50, salt="even")
    traffic(settings, users=80, visits=3, p_click={"test-v1": 0.3, "test-v2": 0.3})
    assert (
        run(settings, repo, "--auto", "--interval", "0.1", "--timeout", "60", "--max-impressions", "500") == 0
    )
    assert "decision: no difference" in capsys.readouterr().out
    assert (repo.pointer().version, repo.pointer().canary) == ("test-v1", None)  # stable keeps everyone


def test_without_an_experiment_or_with_bad_settings_the_cli_says_so(settings, repo, capsys):
    assert run(settings, repo) == 0  # asking for the status of nothing is no error
    assert "no experiment is running" in capsys.readouterr().out
    assert main(["promote", "--models", str(repo.root)]) == 1
    assert "no canary is running" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["promote", "--auto"])
    with pytest.raises(SystemExit):
        main(["status", "--alpha", "2"])
    assert "--alpha" in capsys.readouterr().err
