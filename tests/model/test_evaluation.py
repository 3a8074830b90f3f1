import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from model.evaluation import calibration, evaluate, gauc, logloss, rela_impr


def test_gauc_equals_hand_computed_value_and_skips_single_class_users():
    # user A: positive 0.9 beats 0.5, loses to 0.95 -> AUC 0.5, 3 impressions
    # user B: pairs (0.8>0.3) (0.8>0.1) (0.3=0.3 -> 0.5) (0.3>0.1) -> 3.5/4, 4 impressions
    # users C (all positive) and D (one negative) have a single class and are skipped
    users = np.array(["A", "A", "A", "B", "B", "B", "B", "C", "C", "D"])
    labels = np.array([1, 0, 0, 1, 1, 0, 0, 1, 1, 0])
    scores = np.array([0.9, 0.5, 0.95, 0.8, 0.3, 0.3, 0.1, 0.2, 0.7, 0.4])
    assert gauc(users, labels, scores) == pytest.approx((3 * 0.5 + 4 * 0.875) / 7, abs=1e-12)


def test_gauc_matches_a_per_user_sklearn_loop_with_ties():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 40, 3000)
    labels = rng.integers(0, 2, 3000)
    scores = np.round(rng.random(3000), 1)  # many ties
    num = den = 0.0
    for u in np.unique(users):
        m = users == u
        if len(np.unique(labels[m])) == 2:
            num += m.sum() * roc_auc_score(labels[m], scores[m])
            den += m.sum()
    assert gauc(users, labels, scores) == pytest.approx(num / den, abs=1e-12)


def test_gauc_is_nan_when_no_user_has_both_labels():
    assert np.isnan(gauc(np.array([1, 2]), np.array([1, 0]), np.array([0.3, 0.4])))


def test_logloss_and_rela_impr_match_their_formulas():
    y, p = np.array([1, 0]), np.array([0.8, 0.4])
    assert logloss(y, p) == pytest.approx(-(np.log(0.8) + np.log(0.6)) / 2)
    # the paper: BaseModel 0.8624, DIN 0.8818 -> +5.35%
    assert rela_impr(0.8818, 0.8624) == pytest.approx(5.35, abs=0.01)


def test_evaluate_reports_auc_gauc_logloss_and_calibration():
    labels, probs = np.array([1, 0, 1, 0]), np.array([0.9, 0.1, 0.2, 0.6])
    m = evaluate(np.array([1, 1, 2, 2]), labels, probs)
    assert m == {
        "auc": 0.75,
        "gauc": 0.5,
        "logloss": pytest.approx(logloss(labels, probs)),
        **calibration(labels, probs),
    }


def test_calibration_equals_a_hand_computation_in_equal_bins():
    labels = np.array([0, 0, 1, 0, 1, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9])
    got = calibration(labels, probs, bins=3)  # bins of 2 by predicted CTR
    ece = (abs(0.15 - 0.0) + abs(0.35 - 0.5) + abs(0.7 - 1.0)) / 3
    assert got["ece"] == pytest.approx(ece, abs=1e-12)
    assert got["calibration"] == pytest.approx(np.mean(probs) / 0.5, abs=1e-12)
    assert (got["mean_ctr"], got["click_rate"]) == (pytest.approx(0.4), 0.5)
    assert calibration(labels, labels * 0.999 + 0.0005)["ece"] < 0.001  # right on every row
