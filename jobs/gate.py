"""The deployment gate: score one test set with two bundles through onnxruntime, as served.

Each bundle encodes the raw test rows with its own vocabularies and history length, so a new
version and the serving one are compared on identical impressions, whatever their schemas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from contracts.bundle import Bundle
from contracts.feeds import one_candidate_per_request
from model.data import encode
from model.evaluation import evaluate


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
    """AUC, GAUC and logloss of the bundle on the table's labelled impressions."""
    return evaluate(
        table["user_id"].to_numpy(zero_copy_only=False),
        table["label"].to_numpy().astype(np.float32),
        predict_bundle(bundle, table),
    )


@dataclass(frozen=True)
class GateResult:
    passed: bool
    candidate: dict[str, float]
    serving: dict[str, float] | None  # None on a first deployment
    reason: str

    @property
    def drop(self) -> float:
        """How far the candidate's test GAUC is below the serving version's (0 when above)."""
        return max(0.0, self.serving["gauc"] - self.candidate["gauc"]) if self.serving else 0.0


def gauc_gate(candidate: dict[str, float], serving: dict[str, float] | None, margin: float) -> GateResult:
    """Passes unless the candidate's test GAUC is below the serving version's by more than ``margin``."""
    if serving is None:
        return GateResult(True, candidate, None, "no version is serving yet: nothing to compare against")
    drop = serving["gauc"] - candidate["gauc"]
    verdict = f"test GAUC {candidate['gauc']:.4f} vs serving {serving['gauc']:.4f} (margin {margin:.4f})"
    return GateResult(drop <= margin, candidate, serving, verdict)
