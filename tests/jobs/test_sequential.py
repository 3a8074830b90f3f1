"""The experiment's test: per-user delta-method variance, and an mSPRT that stays at its level
however often it is looked at."""

from __future__ import annotations

import math

import numpy as np
import pytest

from jobs.sequential import SequentialTest, arm_stats


def test_the_ctr_variance_is_the_delta_method_over_users_by_hand():
    s = arm_stats(np.array([2, 3, 5]), np.array([1, 0, 2]))
    # R = 3/10; residuals c - R n = 0.4, -0.9, 0.5; their variance (ddof 1) 1.22 / 2; over k nbar^2
    assert (s.users, s.impressions, s.clicks, s.ctr) == (3, 10, 3, 0.3)
    assert s.variance == pytest.approx((1.22 / 2) / (3 * (10 / 3) ** 2), rel=1e-12)


def test_an_arm_without_traffic_has_no_interval():
    assert math.isinf(arm_stats(np.array([], dtype=int), np.array([], dtype=int)).variance)
    assert math.isinf(arm_stats(np.array([4]), np.array([1])).variance)


def simulate(
    lift: float, reps: int, looks: int, seed: int, test: SequentialTest, naive: bool = False
) -> dict[str, float]:
    """Experiments of 2 x 1000 users whose own CTRs vary (clicks cluster by user), 6 impressions per
    user per look; returns the share of each final decision."""
    rng = np.random.default_rng(seed)
    out = {"promote": 0, "abort": 0, "none": 0}
    for _ in range(reps):
        base = rng.beta(2, 8, (2, 1000))  # mean CTR 0.2
        p = np.stack([base[0], np.clip(base[1] * (1 + lift), 0, 1)])
        n = np.zeros((2, 1000), dtype=np.int64)
        c = np.zeros((2, 1000), dtype=np.int64)
        decided, prev = "none", 1.0
        for _ in range(looks):
            n += 6
            c += rng.binomial(6, p)
            stable, canary = arm_stats(n[0], c[0]), arm_stats(n[1], c[1])
            if naive:  # a fixed-sample z test, read at every look
                z = (canary.ctr - stable.ctr) / math.sqrt(canary.variance + stable.variance)
                if abs(z) > 1.96:
                    decided = "promote" if z > 0 else "abort"
                    break
                continue
            cmp = test.compare(stable, canary, prev)
            prev = cmp.p_value
            if cmp.decision in ("promote", "abort"):
                decided = cmp.decision
                break
        out[decided] += 1
    return {k: v / reps for k, v in out.items()}


def test_an_identical_canary_is_wrongly_decided_at_most_alpha_of_the_time_over_20_looks():
    test = SequentialTest(alpha=0.05, max_impressions=10**9)
    reps = 400
    aa = simulate(0.0, reps, looks=20, seed=1, test=test)
    wrong = aa["promote"] + aa["abort"]
    assert wrong <= 0.05 + 3 * math.sqrt(0.05 * 0.95 / reps)
    # The same data read with a fixed-sample test at every look: what the sequential test prevents.
    naive = simulate(0.0, reps, looks=20, seed=1, test=test, naive=True)
    assert naive["promote"] + naive["abort"] > 2 * 0.05


def test_a_clearly_better_canary_is_promoted_and_a_clearly_worse_one_aborted():
    test = SequentialTest(alpha=0.05, max_impressions=10**9)
    assert simulate(0.25, 50, looks=20, seed=2, test=test)["promote"] >= 0.9
    assert simulate(-0.5, 50, looks=20, seed=3, test=test)["abort"] == 1.0


def test_the_interval_and_the_p_value_agree_and_a_margin_admits_a_non_inferior_canary():
    rng = np.random.default_rng(4)
    n = np.full(500, 40)
    stable, canary = arm_stats(n, rng.binomial(40, 0.20, 500)), arm_stats(n, rng.binomial(40, 0.205, 500))
    strict = SequentialTest().compare(stable, canary)
    assert (strict.low > 0) == (strict.p_value <= 0.05) and strict.low < strict.lift < strict.high
    lenient = SequentialTest(margin=0.1).compare(stable, canary)
    assert strict.decision == "continue" and lenient.decision == "promote"
    assert SequentialTest(max_impressions=1000).compare(stable, canary).decision == "no difference"


def test_no_decision_before_each_arm_has_its_minimum_of_clicks():
    stable, canary = arm_stats(np.full(10, 5), np.full(10, 2)), arm_stats(np.full(10, 5), np.zeros(10, int))
    cmp = SequentialTest(min_clicks=30).compare(stable, canary)
    assert cmp.decision == "continue" and math.isinf(cmp.high)


@pytest.mark.parametrize(
    "kw", [{"alpha": 0}, {"alpha": 1}, {"margin": -0.1}, {"tau": 0}, {"max_impressions": 0}]
)
def test_a_bad_test_setting_is_refused(kw):
    with pytest.raises(ValueError, match="alpha in"):
        SequentialTest(**kw)
