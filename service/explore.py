"""Exploration: a model that only ever shows its own top k learns nothing about the ads it never
shows. With DIN_EXPLORE_SHARE > 0, each slot of an answer that returns fewer items than it was
given is, with that probability, filled with a candidate from outside the model's top k (uniform,
without replacement), and every item carries its propensity: the probability that this policy
shows it in this answer.

The propensities are logged with the impressions. Training does not reweight by them: a CTR model
learns P(click | shown, features) on the impressions, which the policy that chose what to show
does not bias. They are there for what does depend on the policy: estimating, from these logs,
how another ranking would have done (inverse propensity scoring).
"""

from __future__ import annotations

import numpy as np

_rng = np.random.default_rng()


def explore(order: np.ndarray, n: int, share: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``order`` (the model's top k of n candidates, best first) with explored slots swapped in.
    Returns (order, propensity per slot, explored per slot)."""
    k = len(order)
    outside = np.setdiff1d(np.arange(n), order)
    swap = np.flatnonzero(_rng.random(k) < share)[: len(outside)]
    out = order.copy()
    out[swap] = _rng.choice(outside, size=len(swap), replace=False)
    explored = np.zeros(k, dtype=bool)
    explored[swap] = True
    # A top-k item stays unless its slot is drawn; an outside one is shown in share * k of its
    # n - k peers' draws on average (exact up to the cap at n - k draws).
    propensity = np.where(explored, min(1.0, share * k / max(len(outside), 1)), 1 - share)
    return out, propensity, explored
