"""The in-process event-loop benchmark drives the real app through its whole ASGI stack."""

from __future__ import annotations

import json

import uvloop

from bench_loop import run
from model.repository import ModelRepository
from service.settings import Settings
from tests.helpers import REDIS_URL, redis_prefix


def test_it_times_real_answers_of_score_and_healthz(trained, tmp_path):
    repo = ModelRepository(tmp_path / "models")
    repo.set_current(repo.publish(trained[1]))
    body = json.dumps({"user_id": 1, "candidates": [{"item_id": i, "category_id": 1} for i in range(5)]})
    with redis_prefix() as prefix:
        settings = Settings(models=repo.root, redis_url=REDIS_URL, key_prefix=prefix, max_queue_ms=0)
        got = uvloop.run(run(settings, [body.encode()], requests=5))
    assert set(got) == {"healthz_cpu_us", "healthz_wall_us", "score_cpu_us", "score_wall_us"}
    assert all(v > 0 for v in got.values())
