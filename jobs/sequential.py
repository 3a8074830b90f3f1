"""The experiment's statistics: realized CTR per arm, the canary's relative lift, and a sequential
test that may be looked at after every batch of traffic.

Why sequential: ``scripts/experiment.py --auto`` looks at the data again and again and stops at the
first significant look. A fixed-sample two-proportion test, read that way, is wrong far more often
than its nominal level (a 5% test looked at 100 times stops an A/A experiment most of the time).
The mixture sequential probability ratio test (mSPRT; Johari et al., "Always valid inference",
2017; Optimizely's stats engine) gives an always-valid p-value and a confidence sequence: the
chance that an identical canary is *ever* declared different, however often one looks, is at most
``alpha``.

Why per user: arms are drawn per user, and one user's impressions are not independent (a user who
clicks a lot clicks in every visit). CTR is a ratio of per-user sums, so its variance comes from the
delta method over users, not from a binomial over impressions, which would be too narrow.

    R = sum(c) / sum(n)                      realized CTR of an arm (c clicks, n impressions per user)
    Var(R) = (s_c^2 - 2 R s_cn + R^2 s_n^2) / (k nbar^2)       over the arm's k users
    theta = log(R_canary / R_stable),  V = Var(theta) = Var(R_c) / R_c^2 + Var(R_s) / R_s^2
    Lambda = sqrt(V / (V + tau^2)) exp(tau^2 theta^2 / (2 V (V + tau^2)))   (mixture N(0, tau^2))
    p = min over looks of 1 / Lambda
    interval: theta +- sqrt(V (V + tau^2) / tau^2 (log((V + tau^2) / V) - 2 log alpha)), and the
    lift (R_canary / R_stable - 1) and its interval are exp(.) - 1 of these
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Decision = Literal["promote", "abort", "continue", "no difference"]
Z95 = 1.959963984540054


@dataclass(frozen=True)
class ArmStats:
    users: int
    impressions: int
    clicks: int
    ctr: float
    variance: float  # of ctr, by the delta method over users

    def interval(self, z: float = Z95) -> tuple[float, float]:
        half = z * math.sqrt(self.variance)
        return self.ctr - half, self.ctr + half


def arm_stats(impressions: np.ndarray, clicks: np.ndarray) -> ArmStats:
    """Per-user impressions and clicks of one arm -> its CTR and the CTR's variance."""
    n, c = np.asarray(impressions, dtype=np.float64), np.asarray(clicks, dtype=np.float64)
    k, total = len(n), float(n.sum())
    if k == 0 or total == 0:
        return ArmStats(k, int(total), int(c.sum()), float("nan"), float("inf"))
    ratio = float(c.sum()) / total
    if k < 2:
        return ArmStats(k, int(total), int(c.sum()), ratio, float("inf"))
    residual = c - ratio * n  # Var(c - R n) is s_c^2 - 2 R s_cn + R^2 s_n^2
    variance = float(residual.var(ddof=1)) / (k * (total / k) ** 2)
    return ArmStats(k, int(total), int(c.sum()), ratio, variance)


@dataclass(frozen=True)
class Comparison:
    stable: ArmStats
    canary: ArmStats
    lift: float  # relative: canary CTR / stable CTR - 1
    variance: float  # of log(CTR ratio), the statistic tested
    p_value: float  # always valid (sequential); the running minimum when looks are chained
    low: float  # confidence sequence for lift, at 1 - alpha
    high: float
    decision: Decision
    reason: str


@dataclass(frozen=True)
class SequentialTest:
    """The decision rule. ``margin`` >= 0: promote once the canary is significantly better than
    ``-margin`` (margin 0: significantly better; margin 0.01: not worse by more than 1%, which an
    identical copy also meets, given enough traffic); abort once it is significantly worse than the
    stable version; with neither by ``max_impressions`` (both arms), "no difference"."""

    alpha: float = 0.05
    margin: float = 0.0
    tau: float = 0.05  # the mixture's scale: the size of lift the test is most sensitive to
    max_impressions: int = 100_000
    min_clicks: int = 30  # per arm, before any decision: the normal approximation needs them

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1 or self.margin < 0 or self.tau <= 0 or self.max_impressions < 1:
            raise ValueError("alpha in (0, 1), margin >= 0, tau > 0 and max_impressions >= 1")

    def compare(self, stable: ArmStats, canary: ArmStats, previous_p: float = 1.0) -> Comparison:
        if min(stable.clicks, canary.clicks) < self.min_clicks or not (
            math.isfinite(stable.variance) and math.isfinite(canary.variance) and stable.ctr > 0
        ):
            lift = canary.ctr / stable.ctr - 1 if stable.ctr > 0 else float("nan")
            return self._decide(stable, canary, lift, float("inf"), previous_p, -math.inf, math.inf)
        # Tested on the log of the CTR ratio: its variance does not grow with the lift itself, so a
        # large effect is not hidden by its own size as it is on the ratio's scale.
        theta = math.log(canary.ctr / stable.ctr)
        v = max(canary.variance / canary.ctr**2 + stable.variance / stable.ctr**2, 1e-18)
        t2 = self.tau**2
        log_lambda = 0.5 * math.log(v / (v + t2)) + t2 * theta**2 / (2 * v * (v + t2))
        p = min(previous_p, 1.0, math.exp(-log_lambda) if log_lambda < 700 else 0.0)
        half = math.sqrt(v * (v + t2) / t2 * (math.log((v + t2) / v) - 2 * math.log(self.alpha)))
        lift, low, high = (math.expm1(x) for x in (theta, theta - half, theta + half))
        return self._decide(stable, canary, lift, v, p, low, high)

    def _decide(
        self, stable: ArmStats, canary: ArmStats, lift: float, v: float, p: float, low: float, high: float
    ) -> Comparison:
        seen = stable.impressions + canary.impressions
        if high < 0:
            decision: Decision = "abort"
            reason = (
                f"the canary is significantly worse: lift {lift:+.1%}, interval [{low:+.1%}, {high:+.1%}]"
            )
        elif low > -self.margin:
            decision = "promote"
            bar = "better" if self.margin == 0 else f"no more than {self.margin:.1%} worse"
            reason = (
                f"the canary is significantly {bar}: lift {lift:+.1%}, interval [{low:+.1%}, {high:+.1%}]"
            )
        elif seen >= self.max_impressions:
            decision = "no difference"
            reason = (
                f"no significant difference after {seen} impressions (the maximum, {self.max_impressions})"
            )
        else:
            decision = "continue"
            reason = f"{seen} of at most {self.max_impressions} impressions; not yet significant"
        return Comparison(stable, canary, lift, v, p, low, high, decision, reason)
