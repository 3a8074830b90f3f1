"""The deployment gate: score one test set with two bundles through onnxruntime, as served.

Each bundle encodes the raw test rows with its own vocabularies and history length, so a new
version and the serving one are compared on identical impressions, whatever their schemas: in
GAUC, logloss and calibration. And the new version alone on what it will serve: the newest rows
scored with the current context, whose CTRs must not shift from its own on those rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from contracts.bundle import Bundle
from contracts.feeds import one_candidate_per_request
from contracts.schema import FeatureSchema, current_context
from model.data import encode
from model.evaluation import evaluate, gauc


def predict_bundle(bundle: Bundle, table: pa.Table, chunk: int = 4096) -> np.ndarray:
    """CTR of every row, each row a request with one candidate."""
    x = encode(table, bundle.space, bundle.max_history)
    out = []
    for s in range(0, len(x), chunk):
        e = min(s + chunk, len(x))
        feeds = one_candidate_per_request(
            x.profile[s:e], x.context[s:e], x.history[s:e], x.history_len[s:e], x.candidate[s:e]
        )
        out.append(bundle.run(feeds)[0])
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def evaluate_bundle(bundle: Bundle, table: pa.Table) -> dict[str, float]:
    """AUC, GAUC, logloss and calibration of the bundle on the table's labelled impressions; on
    served logs (a ``rank`` column), also the AUC within each served position."""
    labels, probs = table["label"].to_numpy().astype(np.float32), predict_bundle(bundle, table)
    metrics = evaluate(table["user_id"].to_numpy(zero_copy_only=False), labels, probs)
    if "rank" in table.column_names and table["rank"].null_count == 0:
        metrics["position_auc"] = gauc(table["rank"].to_numpy(), labels, probs)
    return metrics


def live_sample(
    table: pa.Table, schema: FeatureSchema, now: float | None = None, rows: int = 2000
) -> pa.Table:
    """The newest ``rows`` of the table as they would be scored now: each context feature the model
    takes set to its current value (the service's context for a request that sends none)."""
    sample = table.slice(max(0, table.num_rows - rows))
    current = current_context(now)
    for name in schema.context:
        if name not in current:
            continue
        column = pa.array(np.full(sample.num_rows, current[name], dtype=np.int64))
        if name in sample.column_names:
            sample = sample.set_column(sample.column_names.index(name), name, column)
        else:
            sample = sample.append_column(name, column)
    return sample


def psi(reference: np.ndarray, live: np.ndarray, bins: int = 10) -> float:
    """The population stability index of ``live`` against ``reference`` over the reference's
    deciles: 0 for the same distribution; 0.25 is usually read as a shift, and every value in one
    decile gives about 8."""
    if len(reference) == 0 or len(live) == 0:
        return 0.0
    edges = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    ref = np.bincount(np.searchsorted(edges, reference, side="right"), minlength=len(edges) + 1) / len(
        reference
    )
    now = np.bincount(np.searchsorted(edges, live, side="right"), minlength=len(edges) + 1) / len(live)
    ref, now = np.maximum(ref, 1e-4), np.maximum(now, 1e-4)
    return float(np.sum((now - ref) * np.log(now / ref)))


def live_shift(bundle: Bundle, table: pa.Table, now: float | None = None) -> float:
    """How far the bundle's CTRs move when the newest impressions are scored with the current
    context instead of their own (PSI): a model that saw one context value in training and meets
    another live can answer every candidate with the same saturated CTR."""
    sample = table.slice(max(0, table.num_rows - 2000))
    return psi(
        predict_bundle(bundle, sample), predict_bundle(bundle, live_sample(sample, bundle.space.schema, now))
    )


@dataclass(frozen=True)
class Margins:
    """How much worse than the serving version the gate lets a new one be, on the newest slice."""

    gauc: float = 0.002  # test GAUC drop
    logloss: float = 0.01  # test logloss rise
    calibration: float = 0.1  # rise of |mean predicted CTR / click rate - 1|
    # The new version's own PSI between its test slice and the same rows now. 0.25 is the usual
    # "significant shift", but a model with real time effects moves that much between hours; a
    # collapse (every CTR in one decile) is several units.
    shift: float = 1.0


@dataclass(frozen=True)
class GateResult:
    passed: bool
    candidate: dict[str, float]
    serving: dict[str, float] | None  # None on a first deployment
    reason: str
    # The margins that would have let a refused candidate through, by option name (what to run to
    # deploy it all the same).
    needed: dict[str, float] = field(default_factory=dict)


def ranking_metric(candidate: dict[str, float], serving: dict[str, float]) -> tuple[str, str]:
    """The metric the ranking check compares, and its name. On served logs the serving version
    chose which item each user saw in which position, and a higher position is clicked more for
    being higher: per-user GAUC then credits the serving version with its own positions, and
    refuses every retrain where position matters. The AUC within each position compares items
    that had the same place, so it judges what each version knows of the items, not where the
    logs put them."""
    if math.isfinite(candidate.get("position_auc", math.nan)) and math.isfinite(
        serving.get("position_auc", math.nan)
    ):
        return "position_auc", "AUC within served positions"
    return "gauc", "test GAUC"


def judge(
    candidate: dict[str, float], serving: dict[str, float] | None, shift: float, margins: Margins
) -> GateResult:
    """Passes unless the candidate is worse than the serving version by more than a margin in
    ranking (GAUC; on served logs, the AUC within each served position), logloss or calibration,
    or its CTRs shift on the current context; the reason names each check."""
    c, m = candidate, margins
    said_shift = f"its CTRs shift on the current context (PSI {shift:.3f} > {m.shift})"
    checks = [(shift, m.shift, "--shift-margin", said_shift)]
    if serving is None:
        verdict = f"no version is serving yet; test GAUC {c['gauc']:.4f}, context shift PSI {shift:.3f}"
    else:
        s = serving
        metric, name = ranking_metric(c, s)
        ranking = f"{name} {c[metric]:.4f} vs serving {s[metric]:.4f} (margin {m.gauc:.4f})"
        if metric != "gauc":
            ranking += f", test GAUC {c['gauc']:.4f} vs {s['gauc']:.4f}"
        logloss = f"logloss {c['logloss']:.4f} vs serving {s['logloss']:.4f} (margin {m.logloss})"
        calibration = (
            f"calibration {c['calibration']:.3f} vs serving {s['calibration']:.3f} (margin {m.calibration})"
        )
        verdict = f"{ranking}, {logloss}, {calibration}, context shift PSI {shift:.3f}"
        worse_calibration = abs(c["calibration"] - 1) - abs(s["calibration"] - 1)
        checks = [
            (s[metric] - c[metric], m.gauc, "--gauc-margin", ranking),
            (c["logloss"] - s["logloss"], m.logloss, "--logloss-margin", logloss),
            (worse_calibration, m.calibration, "--calibration-margin", calibration),
            *checks,
        ]
    failed = [(value, flag, said) for value, margin, flag, said in checks if value > margin]
    needed = {flag: math.ceil(value * 1e4) / 1e4 for value, flag, _ in failed}
    # A refusal names what failed first, then every figure, so a better ranking refused for its
    # calibration alone shows as such.
    reason = f"{'; '.join(said for _, _, said in failed)} (all: {verdict})" if failed else verdict
    return GateResult(not failed, c, serving, reason, needed)
