"""The DIN paper's metrics (AUC, GAUC: the impression-weighted per-user AUC, logloss, RelaImpr),
and calibration: whether the predicted CTRs are the click rates they claim to be."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """sum_u w_u·AUC_u / sum_u w_u, w_u = impressions of u, over users with both labels.

    Vectorised with ranks inside each user (ties get their average rank, as roc_auc_score does),
    because a Python loop over tens of thousands of users would dominate evaluation time.
    """
    users, labels, scores = np.asarray(users), np.asarray(labels).astype(np.float64), np.asarray(scores)
    order = np.lexsort((scores, users))  # by user, then score
    u, y, s = users[order], labels[order], scores[order]
    new_user = np.r_[True, u[1:] != u[:-1]]
    starts = np.flatnonzero(new_user)
    group = np.cumsum(new_user) - 1  # [n] user index of each sorted row
    # Ties (same user, same score) are consecutive; each gets the average 1-based rank of its block.
    new_block = new_user | np.r_[True, s[1:] != s[:-1]]
    block = np.cumsum(new_block) - 1
    first = np.flatnonzero(new_block)
    last = np.r_[first[1:], len(s)] - 1
    ranks = (first + last)[block] / 2 + 1 - starts[group]
    n = np.bincount(group).astype(np.float64)
    n_pos = np.bincount(group, weights=y)
    n_neg = n - n_pos
    pos_rank_sum = np.bincount(group, weights=ranks * y)
    valid = (n_pos > 0) & (n_neg > 0)
    if not valid.any():
        return float("nan")
    user_auc = (pos_rank_sum[valid] - n_pos[valid] * (n_pos[valid] + 1) / 2) / (n_pos[valid] * n_neg[valid])
    return float(np.sum(n[valid] * user_auc) / np.sum(n[valid]))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    return float(log_loss(labels, np.clip(probs, 1e-7, 1 - 1e-7), labels=[0, 1]))


def rela_impr(gauc_model: float, gauc_base: float) -> float:
    """Relative improvement over a base, in percent: ((GAUC_M − 0.5) / (GAUC_B − 0.5) − 1)·100."""
    return ((gauc_model - 0.5) / (gauc_base - 0.5) - 1) * 100


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict[str, float]:
    """``calibration``: the mean predicted CTR over the observed click rate (1 when calibrated);
    ``ece``: the expected calibration error, sum over bins of equal size (by predicted CTR, as
    CTRs crowd near 0) of the bin's share times |its mean prediction - its click rate|."""
    labels, probs = np.asarray(labels, dtype=np.float64), np.asarray(probs, dtype=np.float64)
    observed = float(labels.mean()) if len(labels) else float("nan")
    predicted = float(probs.mean()) if len(probs) else float("nan")
    order = np.argsort(probs, kind="stable")
    ece = 0.0
    for part in np.array_split(order, min(bins, max(len(order), 1))):
        if len(part):
            ece += len(part) / len(order) * abs(probs[part].mean() - labels[part].mean())
    ratio = predicted / observed if observed > 0 else float("inf")
    return {"mean_ctr": predicted, "click_rate": observed, "calibration": ratio, "ece": float(ece)}


def evaluate(users: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {
        "auc": auc(labels, probs),
        "gauc": gauc(users, labels, probs),
        "logloss": logloss(labels, probs),
        **calibration(labels, probs),
    }
