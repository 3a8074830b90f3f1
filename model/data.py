"""Sample tables -> encoded arrays -> training batches.

A sample table has one row per impression (the ``../shared/data`` layout): ``user_id``, ``label``,
one column per candidate field ``f`` with its history in ``hist_f`` (a list, oldest first), and
optional profile and context columns. Everything is vectorised over whole columns.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from contracts.cli import DataError
from contracts.exported import COMMITS as FEEDBACK_COMMITS
from contracts.exported import read_commits
from contracts.keys import user_part
from contracts.schema import CONTEXT_RANGES, MISSING_INT, MISSING_STR, PAD, FeatureSchema, FeatureSpace
from model.din import Batch

# Of an exported folder's samples, the newest test (the gate scores both versions there) and the
# newest before them validate (the epoch, the calibration): small, so that a retrain learns from
# nearly all of the newest day; at least HOLDOUT_ROWS each, so that the two slices judge something.
TIME_SPLIT = 0.05
HOLDOUT_ROWS = 1000
CONTEXT_COLUMNS = tuple(CONTEXT_RANGES)  # recognised as context; other scalar columns are profile
# What jobs.feedback exports besides the features: how each impression was served.
SERVED_COLUMNS = (
    "ts",
    "request_id",
    "model_version",
    "key_id",
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


def is_string_type(t: pa.DataType) -> bool:
    return bool(pa.types.is_string(t) or pa.types.is_large_string(t))


def missing_id(string: bool | None) -> int | str:
    return MISSING_STR if string else MISSING_INT


def scalar_column(table: pa.Table, name: str, string: bool | None = None) -> np.ndarray:
    """One scalar feature's raw ids. What is missing is the MISSING id, exactly what the service
    scores a missing feature with: a null (a logged profile may lack a field, a version may lack a
    feature), every row when the table has no such column, and every row when ``string`` asks for
    the other type of id than the column holds (a feature whose type changed between versions)."""
    n = table.num_rows
    if name not in table.column_names:
        return np.full(n, missing_id(string))
    column = table[name]
    if pa.types.is_null(column.type):
        column = column.cast(pa.string() if string else pa.int64())
    holds_strings = is_string_type(column.type)
    if string is not None and holds_strings != string:
        return np.full(n, missing_id(string))
    if column.null_count:
        column = column.fill_null(missing_id(holds_strings))
    return column.to_numpy(zero_copy_only=False)


def list_ids(column: pa.ChunkedArray | pa.Array, string: bool | None = None) -> np.ndarray:
    """The elements of a list column (a history field), flattened, by ``scalar_column``'s rules:
    a null element, or every element when the lists hold the other type of id, is MISSING."""
    values = pc.list_flatten(column)
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], values.type)
    return scalar_column(pa.table({"v": values}), "v", string)


def vocab_columns(
    table: pa.Table, schema: FeatureSchema, strings: dict[str, bool] | None = None
) -> dict[str, np.ndarray]:
    """Every training occurrence of each feature: candidates and behaviours feed the shared tables.
    ``strings`` fixes which features hold string ids (a warm start keeps its vocabularies' types);
    otherwise a feature's type is its column's, a behaviour field's its candidate column's. Values
    of the other type, and absent columns, are MISSING."""
    strings = strings or {}
    cols = {n: scalar_column(table, n, strings.get(n)) for n in (*schema.profile, *schema.context)}
    for f in schema.behavior:
        candidate = scalar_column(table, f, strings.get(f))
        string = candidate.dtype.kind in "USO"
        cols[f] = np.concatenate([candidate, list_ids(table[f"hist_{f}"], string)])
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
        cols = [space.vocabs[c].encode(scalar_column(table, c, space.vocabs[c].is_string)) for c in names]
        return np.stack(cols, axis=1) if cols else np.zeros((n, 0), dtype=np.int64)

    # A behaviour's fields are lists of one length per row. A field the table lacks (data of another
    # model's features), or a row's null list of it (a version without that field, an id type that
    # changed), is MISSING in each behaviour the other fields give.
    present = [f for f in s.behavior if f"hist_{f}" in table.column_names]
    lengths = np.zeros(n, dtype=np.int64)
    for f in present:
        lengths = np.maximum(lengths, _list_lengths(table[f"hist_{f}"]))
    history_len = np.minimum(lengths, max_history)
    mask = np.arange(max_history) < history_len[:, None]
    history = np.zeros((n, max_history, len(s.behavior)), dtype=np.int32)
    for i, f in enumerate(s.behavior):
        vocab = space.vocabs[f]
        codes = np.full((n, max_history), vocab.encode(np.array([missing_id(vocab.is_string)]))[0])
        if f in present:
            padded, own = _last_k_padded(table[f"hist_{f}"], max_history, vocab.is_string)
            whole = own == history_len
            codes[whole] = vocab.encode(padded.values).reshape(n, max_history)[whole]
        history[..., i] = np.where(mask, codes, PAD)
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


def _last_k_padded(
    column: pa.ChunkedArray | pa.Array, k: int, string: bool | None = None
) -> tuple[_Padded, np.ndarray]:
    """The most recent k elements of each list, left-aligned, oldest first (a null list is empty)."""
    lengths = _list_lengths(column)
    flat = list_ids(column, string)
    ends = np.cumsum(lengths)
    kept = np.minimum(lengths, k)
    starts = ends - kept
    pos = np.arange(k)
    mask = pos < kept[:, None]  # [n, k]
    idx = np.where(mask, starts[:, None] + pos, 0)
    values = flat[idx.reshape(-1)] if len(flat) else np.zeros(idx.size, dtype=np.int64)
    return _Padded(values=values, mask=mask), kept


def _list_lengths(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    return pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)


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
    notes: list[str] = field(default_factory=list)  # what reading it had to make of odd values


def is_feedback_dir(directory: Path) -> bool:
    """A folder written by ``python -m jobs.feedback export`` (its commit log names the files)."""
    return (directory / FEEDBACK_COMMITS).exists()


def feedback_files(directory: Path) -> list[Path]:
    """The committed Parquet files of an exported folder, oldest first."""
    files = [directory / name for batch in read_commits(directory) for name in batch["files"]]
    if not files:
        raise DataError(
            f"{directory}: nothing exported yet. The export writes an impression once its label window "
            "(--label-window-seconds, 30 minutes by default) has passed, so clicks can still arrive; "
            "run python -m jobs.feedback export again later, or with --label-window-seconds 0 to label "
            "what has arrived now"
        )
    return files


def read_feedback(directory: Path, notes: list[str] | None = None) -> pa.Table:
    """Every committed sample of an exported folder, oldest first.

    Files may differ in their columns (versions with other features: a column a file lacks is null
    in its rows) and in a column's type (a feature whose type changed between versions, a user id
    sent once as a string). Such a column takes the type most of its values have, and values of
    the other type are null, which training reads as the MISSING id; ``user_id`` keeps every id
    apart instead, as text in the form of its Redis key (``1`` and ``"1"`` are other users). What
    was set to null is said in ``notes``."""
    tables = [pq.read_table(f) for f in feedback_files(directory)]
    votes: dict[str, Counter[pa.DataType]] = defaultdict(Counter)
    for t in tables:
        for name, column in zip(t.column_names, t.columns, strict=True):
            if not _untyped(column.type):
                votes[name][column.type] += len(column) - column.null_count
    for name, counts in votes.items():
        if len(counts) < 2:
            continue
        if name == "user_id":
            tables = [t.set_column(t.column_names.index(name), name, _user_keys(t[name])) for t in tables]
            continue
        (keep, kept), *others = counts.most_common()
        lost = sum(n for _, n in others)
        if notes is not None:
            types = ", ".join(str(t) for t, _ in others)
            notes.append(f"{name}: {lost} values of type {types} read as missing ({kept} are {keep})")
        tables = [
            t.set_column(t.column_names.index(name), name, pa.nulls(t.num_rows, keep))
            if name in t.column_names and t[name].type != keep
            else t
            for t in tables
        ]
    table = pa.concat_tables(tables, promote_options="permissive")
    return table.take(pc.sort_indices(table, [("ts", "ascending")]))


def _untyped(t: pa.DataType) -> bool:
    """Only nulls (a file whose rows all lack the column): it takes any other file's type."""
    return bool(pa.types.is_null(t) or (pa.types.is_list(t) and pa.types.is_null(t.value_type)))


def _user_keys(column: pa.ChunkedArray) -> pa.Array:
    """User ids as the text of their Redis keys (``contracts.keys.user_part``): 1 is "1", "1" is "\"1\""."""
    return pa.array([None if v is None else user_part(v) for v in column.to_pylist()], pa.string())


def time_split(table: pa.Table, share: float, at_least: int = 0) -> tuple[pa.Table, pa.Table, pa.Table]:
    """Oldest rows train, the next ``share`` validates, the newest ``share`` tests (each at least
    ``at_least`` rows while a quarter of the rows are left to train on): a model is judged on traffic
    newer than anything it learned from (the table is sorted by ts)."""
    n = table.num_rows
    held = max(round(n * share), min(at_least, n // 8))
    a, b = n - 2 * held, n - held
    if not 0 < a < b < n:
        raise DataError(
            f"{n} exported samples are too few to split by time into train, validation and test; "
            "serve more traffic and export again"
        )
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
        notes: list[str] = []
        fit, valid, test = time_split(read_feedback(directory, notes), TIME_SPLIT, HOLDOUT_ROWS)
        return Tables(fit, test, f"{directory.resolve()} (served logs, split by time)", valid, notes)
    if logs.is_raw_log_dir(directory):
        train, test = logs.build_samples(directory, max_history=max_history, seed=seed)
        return Tables(train, test, f"{directory.resolve()} (raw log, DIN protocol)")
    raise unknown_layout(data)


def unknown_layout(data: str) -> DataError:
    from model.logs import LOG_FILES

    return DataError(
        f"--data {data}: expected 'synthetic', a folder with train.parquet and test.parquet, "
        f"a folder with {' and '.join(LOG_FILES)}, or one written by python -m jobs.feedback export"
    )


def peek_schema(data: str) -> FeatureSchema:
    """The features a model trained on ``data`` would take, from the files' headers alone: what a
    redeploy compares with the serving version's before it spends minutes training."""
    from model import logs, synthetic

    if data == "synthetic":
        spec = synthetic.SyntheticSpec(n_users=20, n_items=50, n_categories=5)
        return infer_schema(synthetic.generate(spec)[0])
    directory = Path(data)
    if (directory / "train.parquet").exists() and (directory / "test.parquet").exists():
        return infer_schema(pq.read_schema(directory / "train.parquet").empty_table())
    if is_feedback_dir(directory):
        names = dict.fromkeys(n for f in feedback_files(directory) for n in pq.read_schema(f).names)
        return infer_schema(pa.table({n: pa.nulls(0) for n in names}))
    if logs.is_raw_log_dir(directory):
        return infer_schema(pa.table({n: pa.nulls(0) for n in logs.sample_columns(directory)}))
    raise unknown_layout(data)
