"""Exploration: a share of the slots goes to candidates outside the model's top k, each item with
the propensity that this policy shows it."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.explore import explore
from service.main import create_app
from tests.service.conftest import changed
from tests.service.test_impressions import CANDIDATES, stream


def test_explored_slots_come_from_outside_the_top_k_at_the_set_share_with_their_propensity():
    n, k, share, trials = 20, 4, 0.25, 4000
    order = np.array([7, 3, 11, 0])
    shown: Counter[int] = Counter()
    swaps = 0
    for _ in range(trials):
        out, propensity, explored = explore(order, n, share)
        assert len(set(out.tolist())) == k and out[~explored].tolist() == order[~explored].tolist()
        assert not set(out[explored].tolist()) & set(order.tolist())
        assert propensity.tolist() == [share * k / (n - k) if e else 1 - share for e in explored]
        swaps += int(explored.sum())
        shown.update(out.tolist())
    # Binomial bounds at about 4.5 standard deviations: the share of slots swapped, and how often
    # one outside candidate is shown against its propensity.
    assert abs(swaps / (trials * k) - share) < 4.5 * np.sqrt(share * (1 - share) / (trials * k))
    p = share * k / (n - k)
    assert abs(shown[5] / trials - p) < 4.5 * np.sqrt(p * (1 - p) / trials)
    assert abs(shown[7] / trials - (1 - share)) < 4.5 * np.sqrt(share * (1 - share) / trials)


def test_nothing_is_explored_when_every_candidate_is_returned():
    out, propensity, explored = explore(np.array([2, 0, 1]), 3, 0.5)
    assert out.tolist() == [2, 0, 1] and not explored.any() and propensity.tolist() == [0.5] * 3


@pytest.mark.parametrize("share", [0.0, 0.4])
def test_the_service_marks_explored_items_and_logs_their_propensity(settings, share):
    with TestClient(create_app(changed(settings, explore_share=share))) as c:
        answers = [
            c.post("/score", json={"user_id": i, "candidates": CANDIDATES, "top_k": 3}).json()
            for i in range(60)
        ]
    marked = [item for a in answers for item in a["items"] if item.get("explored")]
    records = stream(settings, "impressions", want=60)
    assert sum(len(r["candidates"]) for r in records) == 180
    if share == 0:
        assert not marked and all("propensity" not in r and "explored" not in r for r in records)
        return
    assert 0 < len(marked) < 180  # 72 expected
    logged = [(e, p) for r in records for e, p in zip(r["explored"], r["propensity"], strict=True)]
    assert sum(e for e, _ in logged) == len(marked)
    for was_explored, propensity in logged:
        assert propensity == (0.4 * 3 / 5 if was_explored else 0.6)
