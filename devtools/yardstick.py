"""The simulator's yardstick: a plain logistic regression with the crosses a CTR team writes by hand,
trained on the same exported logs as the loop's model and scored on the same slates.

Features, hashed: the candidate's item id, its category, the user's age group crossed with the
category, and the log share of the candidate's category in the user's stored history (plus one).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.sparse as sp
from sklearn.feature_extraction import FeatureHasher
from sklearn.linear_model import LogisticRegression

from model.data import read_feedback

AGES_PER_GROUP = 10


def rows(
    item_ids: list[int], categories: list[int], ages: list[int], histories: list[list[int]]
) -> sp.csr_matrix:
    """The feature matrix of candidates: each row its item id, category, age and stored categories."""
    hasher = FeatureHasher(n_features=2**18, input_type="string", alternate_sign=False)
    tokens = [
        [f"item={i}", f"cat={c}", f"age_cat={(a - 18) // AGES_PER_GROUP}:{c}"]
        for i, c, a in zip(item_ids, categories, ages, strict=True)
    ]
    share = [
        np.log1p(sum(1 for h in hist if h == c) / max(len(hist), 1))
        for c, hist in zip(categories, histories, strict=True)
    ]
    return sp.hstack([hasher.transform(tokens), sp.csr_matrix(np.array(share)[:, None])]).tocsr()


class Yardstick:
    def __init__(self) -> None:
        self.model: LogisticRegression | None = None

    def fit(self, logs: Path) -> int:
        """Trained on every exported impression; returns how many."""
        table: pa.Table = read_feedback(logs)
        ages = (
            [a if a is not None else 18 for a in table["age"].to_pylist()]
            if "age" in table.column_names
            else [18] * table.num_rows
        )
        x = rows(
            table["item_id"].to_pylist(),
            table["category_id"].to_pylist(),
            ages,
            table["hist_category_id"].to_pylist(),
        )
        y = table["label"].to_numpy()
        if len(np.unique(y)) < 2:
            self.model = None
            return table.num_rows
        self.model = LogisticRegression(C=1.0, max_iter=500).fit(x, y)
        return table.num_rows

    def order(
        self, item_ids: list[int], categories: list[int], age: int, history: list[int]
    ) -> np.ndarray | None:
        """The candidates ranked by the regression's CTR, best first; None before it is trained."""
        if self.model is None:
            return None
        n = len(item_ids)
        p = self.model.predict_proba(rows(item_ids, categories, [age] * n, [history] * n))[:, 1]
        return np.argsort(-p, kind="stable")
