"""The /score profile finds every stage it names in the real app: a renamed function would read 0."""

from __future__ import annotations

import uvloop

from contracts.repository import ModelRepository
from devtools.profile_score import STAGES, profile, table
from tests.helpers import REDIS_URL, redis_prefix


def test_every_stage_of_a_real_score_is_found_and_the_parts_add_up(trained, tmp_path):
    repo = ModelRepository(tmp_path / "models")
    repo.set_current(repo.publish(trained[1]))
    with redis_prefix() as prefix:
        result = uvloop.run(profile(repo.root, 30, REDIS_URL, prefix))
    stages = result["stages_us"]
    for stage in [*STAGES, "serialise the answer", "metrics (prometheus_client)"]:
        assert stages[stage] > 0, stage
    assert result["model_us"] > 0
    assert abs(sum(stages.values()) - result["event_loop_us"]) < 1e-6
    assert table(result).count("\n") == 2 + len(stages) + 1
