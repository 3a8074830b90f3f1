"""Sample tables -> encoded arrays -> training batches.

A sample table has one row per impression (the ``../shared/data`` layout): ``user_id``, ``label``,
one column per candidate field ``f`` with its history in ``hist_f`` (a list, oldest first), and
optional profile and context columns. Everything is vectorised over whole columns.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from model.din import Batch
from model.feedback import COMMITS as FEEDBACK_COMMITS
from model.feedback import read_commits
from model.schema import MISSING_INT, MISSING_STR, PAD, FeatureSchema, FeatureSpace

TIME_SPLIT = 0.1  # of an exported folder's samples, the newest validate and the newest after them test
CONTEXT_COLUMNS = ("hour", "weekday")  # recognised as context; other scalar columns are profile
# What model.feedback exports besides the features: how each impression was served.
SERVED_COLUMNS = (
    "ts",
    "request_id",
    "model_version",
    "served_ctr",
    "rank",
    "degraded",
    "propensity",
    "explored",
)
NON_FEATURE_COLUMNS = ("user_id", "label", "timestamp", *SERVED_COLUMNS)


def infer_schema(table: pa.Table) -> FeatureSchema:
    names = table.column_names
    behavior = tuple(n[len("hist_") :] for n in names if n.startswith("hist_") and n[len("hist_") :] in names)
    taken = set(behavior) | {f"hist_{b}" for b in behavior} | set(NON_FEATURE_COLUMNS)
    context = tuple(n for n in names if n in CONTEXT_COLUMNS)
    profile = tuple(n for n in names if n not in taken and n not in context)
    return FeatureSchema(profile=profile, behavior=behavior, context=context)


def read_split(directory: Path, split: str) -> pa.Table:
    return pq.read_table(directory / f"{split}.parquet")


def scalar_column(table: pa.Table, name: str) -> np.ndarray:
    """One scalar feature's raw ids; a missing value (null, as logged profiles may have) is the
    MISSING id, exactly what the service scores a missing feature with."""
    column = table[name]
    if column.null_count:
        fill = (
            MISSING_STR
            if pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
            else MISSING_INT
        )
        if pa.types.is_null(column.type):
            column = column.cast(pa.int64())
        column = column.fill_null(fill)
    return column.to_numpy(zero_copy_only=False)


def vocab_columns(table: pa.Table, schema: FeatureSchema) -> dict[str, np.ndarray]:
    """Every training occurrence of each feature: candidates and behaviours feed the shared tables."""
    cols = {n: scalar_column(table, n) for n in (*schema.profile, *schema.context)}
    for f in schema.behavior:
        flat = pc.list_flatten(table[f"hist_{f}"]).to_numpy()
        cols[f] = np.concatenate([table[f].to_numpy(), flat])
    return cols


@dataclass
class Samples:
    """Encoded samples; row i of every array is impression i."""

    profile: np.ndarray  # [n, P] int64
    context: np.ndarray  # [n, C] int64
    candidate: np.ndarray  # [n, F] int64
    history: np.ndarray  # [n, L, F] int32 (indices fit; halves memory), PAD after history_len
    history_len: np.ndarray  # [n] int64
    label: np.ndarray  # [n] float32
    user: np.ndarray  # [n] raw user ids, for GAUC

    def __len__(self) -> int:
        return len(self.label)

    def take(self, idx: np.ndarray) -> Samples:
        return Samples(*(a[idx] for a in self.__dict__.values()))

    def batch(self, idx: np.ndarray) -> tuple[Batch, torch.Tensor]:
        lengths = self.history_len[idx]
        width = max(int(lengths.max(initial=0)), 1)  # trim padding that no row of this batch uses
        b = Batch(
            profile=torch.from_numpy(self.profile[idx]),
            context=torch.from_numpy(self.context[idx]),
            candidate=torch.from_numpy(self.candidate[idx]),
            history=torch.from_numpy(self.history[idx, :width].astype(np.int64)),
            history_len=torch.from_numpy(lengths),
        )
        return b, torch.from_numpy(self.label[idx])

    def batches(
        self, batch_size: int, rng: np.random.Generator | None = None
    ) -> Iterator[tuple[Batch, torch.Tensor]]:
        """In order, or shuffled when ``rng`` is given."""
        order = rng.permutation(len(self)) if rng is not None else np.arange(len(self))
        for start in range(0, len(order), batch_size):
            yield self.batch(order[start : start + batch_size])


def encode(table: pa.Table, space: FeatureSpace, max_history: int) -> Samples:
    s, n = space.schema, table.num_rows

    def scalar_group(names: tuple[str, ...]) -> np.ndarray:
        cols = [space.vocabs[c].encode(scalar_column(table, c)) for c in names]
        return np.stack(cols, axis=1) if cols else np.zeros((n, 0), dtype=np.int64)

    history = np.zeros((n, max_history, len(s.behavior)), dtype=np.int32)
    history_len = np.zeros(n, dtype=np.int64)
    for i, f in enumerate(s.behavior):
        padded, history_len = _last_k_padded(table[f"hist_{f}"], max_history)
        flat_codes = space.vocabs[f].encode(padded.values)
        history[..., i] = np.where(padded.mask, flat_codes.reshape(n, max_history), PAD)
    return Samples(
        profile=scalar_group(s.profile),
        context=scalar_group(s.context),
        candidate=scalar_group(s.behavior),
        history=history,
        history_len=history_len,
        label=table["label"].to_numpy().astype(np.float32),
        user=table["user_id"].to_numpy(zero_copy_only=False),
    )


@dataclass
class _Padded:
    values: np.ndarray  # [n*K] raw ids (garbage where mask is False)
    mask: np.ndarray  # [n, K]


def _last_k_padded(column: pa.ChunkedArray | pa.Array, k: int) -> tuple[_Padded, np.ndarray]:
    """The most recent k elements of each list, left-aligned, oldest first."""
    lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(column).to_numpy(zero_copy_only=False)
    ends = np.cumsum(lengths)
    kept = np.minimum(lengths, k)
    starts = ends - kept
    pos = np.arange(k)
    mask = pos < kept[:, None]  # [n, k]
    idx = np.where(mask, starts[:, None] + pos, 0)
    values = flat[idx.reshape(-1)] if len(flat) else np.zeros(idx.size, dtype=np.int64)
    return _Padded(values=values, mask=mask), kept


def split_by_user(users: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of rows whose user falls in a seeded random ``fraction`` of users."""
    uniq = np.unique(users)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(uniq, size=max(1, round(fraction * len(uniq))), replace=False)
    return np.isin(users, chosen)


@dataclass
class Tables:
    train: pa.Table
    test: pa.Table
    source: str  # what the samples were built from, recorded in metrics and manifests
    valid: pa.Table | None = None  # None: validation users are carved out of train


def is_feedback_dir(directory: Path) -> bool:
    """A folder written by ``python -m model.feedback export`` (its commit log names the files)."""
    return (directory / FEEDBACK_COMMITS).exists()


def read_feedback(directory: Path) -> pa.Table:
    """Every committed sample of an exported folder, oldest first."""
    files = [directory / name for batch in read_commits(directory) for name in batch["files"]]
    if not files:
        raise ValueError(f"{directory}: no samples exported yet")
    table = pa.concat_tables([pq.read_table(f) for f in files], promote_options="permissive")
    return table.take(pc.sort_indices(table, [("ts", "ascending")]))


def time_split(table: pa.Table, valid: float, test: float) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Oldest rows train, the next ``valid`` share validates, the newest ``test`` share tests: a
    model is judged on traffic newer than anything it learned from (the table is sorted by ts)."""
    n = table.num_rows
    a, b = round(n * (1 - valid - test)), round(n * (1 - test))
    if not 0 < a < b < n:
        raise ValueError(f"{n} samples are too few to split by time into train, validation and test")
    return table.slice(0, a), table.slice(a, b - a), table.slice(b)


def load_tables(data: str, max_history: int, seed: int) -> Tables:
    """``data`` is "synthetic", a folder with train/test.parquet, or a folder with a raw log."""
    from model import logs, synthetic  # local: each pulls in only what its format needs

    if data == "synthetic":
        train, test = synthetic.generate(synthetic.SyntheticSpec(max_history=max_history, seed=seed))
        return Tables(train, test, f"synthetic(seed={seed})")
    directory = Path(data)
    if (directory / "train.parquet").exists() and (directory / "test.parquet").exists():
        return Tables(read_split(directory, "train"), read_split(directory, "test"), str(directory.resolve()))
    if is_feedback_dir(directory):
        fit, valid, test = time_split(read_feedback(directory), TIME_SPLIT, TIME_SPLIT)
        return Tables(fit, test, f"{directory.resolve()} (served logs, split by time)", valid)
    if logs.is_raw_log_dir(directory):
        train, test = logs.build_samples(directory, max_history=max_history, seed=seed)
        return Tables(train, test, f"{directory.resolve()} (raw log, DIN protocol)")
    raise FileNotFoundError(
        f"--data {data}: expected 'synthetic', a folder with train.parquet and test.parquet, "
        f"a folder with {' and '.join(logs.LOG_FILES)}, or one written by model.feedback export"
    )
