"""Raw behaviour log -> DIN sample tables, with the DIN paper's protocol (see ../shared/data/README.md).

Input folder: ``interactions.csv.gz`` (user_id,item_id,timestamp[,rating]), ``items.csv.gz``
(item_id,category_id[,...]) and optionally ``users.csv.gz`` (user_id, profile columns...).

* Implicit log (no rating), as the Amazon sets: each user's behaviours sorted by time are b1..bn;
  for k = 1..n-1 the sample predicts b(k+1) from b1..bk (label 1) and, with the same history, one
  item drawn uniformly from the catalog that the user never interacted with (label 0). Steps
  k < n-1 are train, the last step is test.
* Explicit log (with rating), as MovieLens: a rating >= ``click_rating`` is a click; every rating
  after the first is one sample whose history is the user's earlier rated items; the context is
  the hour and weekday (UTC) of the rating; users are split ``1 - test_user_fraction`` / rest.
"""

from __future__ import annotations

import csv
import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

LOG_FILES = ("interactions.csv.gz", "items.csv.gz")
IGNORED_PROFILE_COLUMNS = ("user_id", "zip_code")  # identifiers, not profile features


def is_raw_log_dir(directory: Path) -> bool:
    return all((directory / f).exists() for f in LOG_FILES)


def sample_columns(directory: Path) -> list[str]:
    """The columns ``build_samples`` gives this log, from the files' header lines alone."""
    log = header(directory / "interactions.csv.gz")
    columns = ["user_id", "item_id", "category_id", "label", "hist_item_id", "hist_category_id"]
    if "rating" in log:
        columns += ["hour", "weekday", "timestamp"]
    users = directory / "users.csv.gz"
    if users.exists():
        columns += [c for c in header(users) if c not in IGNORED_PROFILE_COLUMNS]
    return columns


def header(path: Path) -> list[str]:
    with gzip.open(path, "rt") as f:
        return next(csv.reader(f), [])


def build_samples(
    directory: Path,
    max_history: int = 100,
    seed: int = 0,
    click_rating: float = 4,
    test_user_fraction: float = 0.2,
    profile_columns: Sequence[str] | None = None,
) -> tuple[pa.Table, pa.Table]:
    """Returns (train, test) sample tables in the shared layout."""
    log, items = read_time_ordered(directory)
    users_path = directory / "users.csv.gz"
    users = pacsv.read_csv(users_path) if users_path.exists() else None
    user = log["user_id"].to_numpy()
    item = log["item_id"].to_numpy()
    category = lookup(items, "item_id", "category_id", item)
    first = np.r_[True, user[1:] != user[:-1]]
    start_of_user = np.maximum.accumulate(np.where(first, np.arange(len(user)), 0))
    position = np.arange(len(user)) - start_of_user  # k of each behaviour inside its user's sequence
    is_last = np.r_[user[1:] != user[:-1], True]

    targets = np.flatnonzero(position >= 1)  # every behaviour that has at least one earlier one
    hist_start = np.maximum(start_of_user[targets], targets - max_history)
    hist_item = ragged_slices(item, hist_start, targets)
    hist_cat = ragged_slices(category, hist_start, targets)
    columns: dict[str, pa.Array | np.ndarray] = {"user_id": user[targets]}

    explicit = "rating" in log.column_names
    if explicit:
        rating = log["rating"].to_numpy()[targets]
        columns |= {
            "item_id": item[targets],
            "category_id": category[targets],
            "label": (rating >= click_rating).astype(np.int64),
            "hist_item_id": hist_item,
            "hist_category_id": hist_cat,
        }
        ts = log["timestamp"].to_numpy()[targets].astype(np.int64)
        columns |= {
            "hour": (ts // 3600) % 24,
            "weekday": (ts // 86400 + 3) % 7,
            "timestamp": ts,
        }  # 1970-01-01: Thu
    else:
        negatives = _sample_negatives(user, item, user[targets], items["item_id"].to_numpy(), seed)
        both = np.repeat(targets, 2)  # positive then negative, sharing the history
        columns = {
            "user_id": user[both],
            "item_id": np.stack([item[targets], negatives], 1).reshape(-1),
            "category_id": np.stack(
                [category[targets], lookup(items, "item_id", "category_id", negatives)], 1
            ).reshape(-1),
            "label": np.tile(np.array([1, 0], dtype=np.int64), len(targets)),
            "hist_item_id": _repeat_lists(hist_item, 2),
            "hist_category_id": _repeat_lists(hist_cat, 2),
        }
    table = pa.table(columns)
    if users is not None:
        table = _join_profile(table, users, profile_columns)

    if explicit:
        uniq = np.unique(user)
        rng = np.random.default_rng(seed)
        test_users = rng.choice(uniq, size=round(test_user_fraction * len(uniq)), replace=False)
        is_test = np.isin(table["user_id"].to_numpy(), test_users)
    else:
        is_test = np.repeat(is_last[targets], 2)
    return table.filter(pa.array(~is_test)), table.filter(pa.array(is_test))


def read_time_ordered(directory: Path) -> tuple[pa.Table, pa.Table]:
    """(interactions sorted by user then time, items). Same-time ties keep log order (the order
    events arrived in)."""
    log = pacsv.read_csv(directory / "interactions.csv.gz")
    for col in ("user_id", "item_id", "timestamp"):
        if col not in log.column_names:
            raise ValueError(f"{directory / 'interactions.csv.gz'}: missing column {col!r}")
        if not pa.types.is_integer(log[col].type):
            raise ValueError(f"{directory / 'interactions.csv.gz'}: column {col!r} must hold integers")
    order = np.lexsort((np.arange(log.num_rows), log["timestamp"].to_numpy(), log["user_id"].to_numpy()))
    return log.take(pa.array(order)), pacsv.read_csv(directory / "items.csv.gz")


def lookup(table: pa.Table, key: str, value: str, query: np.ndarray) -> np.ndarray:
    """``table[value]`` where ``table[key] == query``, vectorised; unknown keys are an error."""
    keys = table[key].to_numpy()
    vals = table[value].to_numpy(zero_copy_only=False)
    order = np.argsort(keys, kind="stable")
    pos = np.clip(np.searchsorted(keys[order], query), 0, len(keys) - 1)
    found = keys[order][pos] == query
    if not found.all():
        missing = np.unique(query[~found])[:5].tolist()
        raise ValueError(f"items.csv.gz has no {value} for {key} {missing} (and maybe more)")
    return vals[order][pos]


def ragged_slices(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> pa.ListArray:
    """values[starts[i]:ends[i]] for every i, as one Arrow list array, without a Python loop."""
    lengths = ends - starts
    offsets = np.r_[0, np.cumsum(lengths)]
    idx = np.repeat(starts - offsets[:-1], lengths) + np.arange(offsets[-1])
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(values[idx]))


def _repeat_lists(lists: pa.ListArray, times: int) -> pa.ListArray:
    return lists.take(pa.array(np.repeat(np.arange(len(lists)), times)))


def _sample_negatives(
    log_user: np.ndarray, log_item: np.ndarray, for_user: np.ndarray, catalog: np.ndarray, seed: int
) -> np.ndarray:
    """One uniform catalog item per query that its user never interacted with (rejection sampling)."""
    rng = np.random.default_rng(seed)
    catalog = np.unique(catalog)
    seen = np.unique(log_user.astype(np.int64) * (catalog.max() + 1) + log_item)
    out = catalog[rng.integers(0, len(catalog), len(for_user))]
    for _ in range(1000):
        clash = np.isin(for_user.astype(np.int64) * (catalog.max() + 1) + out, seen)
        if not clash.any():
            return out
        out[clash] = catalog[rng.integers(0, len(catalog), int(clash.sum()))]
    raise ValueError("could not draw negatives: some user has interacted with almost the whole catalog")


def _join_profile(table: pa.Table, users: pa.Table, profile_columns: Sequence[str] | None) -> pa.Table:
    names = profile_columns or [c for c in users.column_names if c not in IGNORED_PROFILE_COLUMNS]
    user_ids = table["user_id"].to_numpy()
    for name in names:
        table = table.append_column(name, pa.array(lookup(users, "user_id", name, user_ids)))
    return table
