"""The in-process CPU benchmark measures real answers of this tree's app, in a subprocess."""

from __future__ import annotations

from contracts.repository import ModelRepository
from devtools.bench_cpu import measure
from devtools.liveserver import ROOT
from tests.helpers import REDIS_URL, redis_prefix


def test_it_measures_this_trees_app_answering_score_and_healthz(trained, tmp_path):
    repo = ModelRepository(tmp_path / "models")
    repo.set_current(repo.publish(trained[1]))
    with redis_prefix() as prefix:
        got = measure(ROOT, repo.root, 20, "on", REDIS_URL, prefix)
    assert set(got) == {"score", "healthz"} and got["score"] > got["healthz"] > 0
