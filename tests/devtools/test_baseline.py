"""The benchmark's baseline is an honest scorer: the same weights give the same CTRs as the service's
serving graph, on the same Redis data."""

from __future__ import annotations

import json
import os
import urllib.request

import numpy as np
import pytest
import redis

from contracts.bundle import load_bundle
from contracts.keys import Keys, encode_profile, encode_value
from contracts.schema import current_context
from devtools.baseline import SERVE_COMMAND
from devtools.baseline.export import export_baseline
from devtools.liveserver import start_server, stop_server
from service.features import Features
from tests.helpers import REDIS_URL, redis_prefix

pytestmark = pytest.mark.slow


def post(url: str, body: dict) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_baseline_ranks_with_the_ctrs_of_the_serving_graph(trained, tmp_path):
    ckpt, bundle_dir = trained
    export_baseline(ckpt, tmp_path / "baseline")
    bundle = load_bundle(bundle_dir)
    space = bundle.space
    rng = np.random.default_rng(0)

    def ids(name: str, n: int) -> list:
        return rng.choice(space.vocabs[name].keys, n).tolist()

    history = [dict(zip(space.schema.behavior, row, strict=True)) for row in zip(
        *(ids(f, 12) for f in space.schema.behavior), strict=True)]  # fmt: skip
    candidates = [dict(zip(space.schema.behavior, row, strict=True)) for row in zip(
        *(ids(f, 40) for f in space.schema.behavior), strict=True)]  # fmt: skip
    candidates[0]["item_id"] = 10**12  # an id the model never saw
    profile = {name: ids(name, 1)[0] for name in space.schema.profile}
    with redis_prefix() as prefix:
        keys, client = Keys(prefix), redis.Redis.from_url(REDIS_URL)
        client.rpush(keys.history(7), *map(encode_value, history))
        client.hset(keys.profile(7), mapping=encode_profile(profile))
        client.close()
        env = {"BASELINE_MODEL_DIR": str(tmp_path / "baseline"), "BASELINE_REDIS_URL": REDIS_URL,
               "BASELINE_KEY_PREFIX": prefix}  # fmt: skip
        server, url = start_server(os.environ | env, command=SERVE_COMMAND)
        try:
            for _ in range(3):  # the context is the clock's hour: ask again if it turned meanwhile
                before = current_context()
                answer = post(url + "/score", {"user_id": 7, "candidates": candidates, "top_k": 25})
                if current_context() == before:
                    break
        finally:
            stop_server(server)
    features = Features(space)
    feeds = features.feeds(history, profile, before, features.encode_rows(candidates, space.schema.behavior))
    expected = bundle.run(feeds)[0]
    order = np.argsort(-expected, kind="stable")[:25]
    got = answer["items"]
    assert len(got) == 25
    assert np.abs(np.array([g["ctr"] for g in got]) - expected[order]).max() < 1e-5
    for g in got:  # each answer is a candidate, with that candidate's CTR
        i = candidates.index({k: v for k, v in g.items() if k != "ctr"})
        assert abs(g["ctr"] - expected[i]) < 1e-5
