"""A deterministic SYNTHETIC dataset with all four DIN feature groups (not real user data).

Each user has a few interest categories. Their behaviours are drawn from those interests. A
candidate is clicked with a probability that grows with the number of the user's recent
behaviours in the candidate's category and jumps when the user has the candidate's complement
item (plus a small item-quality, profile and context effect), so a model that attends to the
matching behaviours should beat one that averages them away.
It is for the offline demo, load tests and fast unit tests; anything trained on it says "synthetic".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from model.logs import ragged_slices

AGES = np.array([18, 25, 35, 45, 56])
GENDERS = np.array(["F", "M"])


@dataclass(frozen=True)
class SyntheticSpec:
    n_users: int = 4000
    n_items: int = 2000
    n_categories: int = 50
    max_interests: int = 4  # each user has 2..max_interests interest categories
    min_sequence: int = 5
    max_sequence: int = 80
    impressions_per_user: int = 10  # per user; the latest `test_impressions` are test
    test_impressions: int = 3
    recent_window: int = 20  # behaviours that count as "recent" for the click rule
    max_history: int = 100
    seed: int = 0


@dataclass
class SyntheticLog:
    """The raw behaviour log behind the samples: what a service would hold in its behaviour store."""

    user: np.ndarray  # [T] user id of each behaviour, grouped by user, oldest first
    item: np.ndarray  # [T]
    category: np.ndarray  # [T]
    item_category: np.ndarray  # [n_items] category of each item id
    age: np.ndarray  # [n_users]
    gender: np.ndarray  # [n_users]


def generate_log(spec: SyntheticSpec) -> SyntheticLog:
    rng = np.random.default_rng(spec.seed)
    item_category = rng.integers(0, spec.n_categories, spec.n_items)
    by_category = np.argsort(item_category, kind="stable")  # item ids grouped by category
    cat_start = np.searchsorted(item_category[by_category], np.arange(spec.n_categories))
    cat_size = np.bincount(item_category, minlength=spec.n_categories)

    n_interests = rng.integers(2, spec.max_interests + 1, spec.n_users)
    interests = rng.integers(0, spec.n_categories, (spec.n_users, spec.max_interests))
    weights = rng.dirichlet(np.ones(spec.max_interests), spec.n_users)
    weights[np.arange(spec.max_interests) >= n_interests[:, None]] = 0
    weights /= weights.sum(1, keepdims=True)

    lengths = rng.integers(spec.min_sequence, spec.max_sequence + 1, spec.n_users)
    user = np.repeat(np.arange(spec.n_users), lengths)
    pick = (rng.random(len(user))[:, None] > np.cumsum(weights, 1)[user]).sum(1)  # interest slot
    category = interests[user, np.minimum(pick, spec.max_interests - 1)]
    category = np.where(cat_size[category] > 0, category, interests[user, 0])
    item = by_category[
        cat_start[category] + (rng.random(len(user)) * np.maximum(cat_size[category], 1)).astype(int)
    ]
    return SyntheticLog(
        user=user,
        item=item,
        category=item_category[item],
        item_category=item_category,
        age=AGES[rng.integers(0, len(AGES), spec.n_users)],
        gender=GENDERS[rng.integers(0, 2, spec.n_users)],
    )


def generate(spec: SyntheticSpec = SyntheticSpec()) -> tuple[pa.Table, pa.Table]:
    """(train, test) sample tables in the shared layout, with profile (age, gender) and context."""
    log = generate_log(spec)
    rng = np.random.default_rng(spec.seed + 1)
    quality = rng.normal(0, 0.5, spec.n_items)
    lengths = np.bincount(log.user, minlength=spec.n_users)
    user_start = np.r_[0, np.cumsum(lengths)[:-1]]

    m = spec.impressions_per_user
    imp_user = np.repeat(np.arange(spec.n_users), m)
    cut = 1 + (rng.random(len(imp_user)) * lengths[imp_user]).astype(int)  # history = first `cut` behaviours
    cut = np.sort(cut.reshape(spec.n_users, m), axis=1).reshape(-1)
    hist_end = user_start[imp_user] + cut
    hist_start = np.maximum(user_start[imp_user], hist_end - spec.max_history)

    # Every item has a complement (think charger for a phone), paired inside its category, so only an
    # item-level comparison with single behaviours can see it. A third of the candidates are the
    # complement of one of the user's behaviours, a third share a category with one, a third are random.
    order = np.lexsort((rng.random(spec.n_items), log.item_category))
    complement = np.empty(spec.n_items, dtype=np.int64)
    pairs = order[: len(order) // 2 * 2].reshape(-1, 2)
    complement[pairs[:, 0]], complement[pairs[:, 1]] = pairs[:, 1], pairs[:, 0]
    if len(order) % 2:
        complement[order[-1]] = order[-1]
    behaviour = log.item[user_start[imp_user] + (rng.random(len(imp_user)) * cut).astype(int)]
    same_category = _random_item_in_category(log.item_category, log.item_category[behaviour], rng)
    kind = rng.integers(0, 3, len(imp_user))
    candidate = np.select(
        [kind == 0, kind == 1],
        [complement[behaviour], same_category],
        rng.integers(0, spec.n_items, len(imp_user)),
    )
    cand_cat = log.item_category[candidate]
    has_complement = _count_in_range(log.item, complement[candidate], hist_start, hist_end) > 0

    recent = _count_in_range(
        log.category, cand_cat, np.maximum(hist_start, hist_end - spec.recent_window), hist_end
    )
    hour = rng.integers(0, 24, len(imp_user))
    weekday = rng.integers(0, 7, len(imp_user))
    logit = (
        -2.0
        + 1.0 * np.sqrt(recent)
        + 2.0 * has_complement
        + quality[candidate]
        + 0.4 * (hour >= 18)
        + 0.3 * (log.gender[imp_user] == "F")
        - 0.2 * (log.age[imp_user] > 40)
    )
    label = (rng.random(len(imp_user)) < 1 / (1 + np.exp(-logit))).astype(np.int64)

    table = pa.table(
        {
            "user_id": imp_user.astype(np.int64),
            "item_id": candidate.astype(np.int64),
            "category_id": cand_cat.astype(np.int64),
            "label": label,
            "hist_item_id": ragged_slices(log.item.astype(np.int64), hist_start, hist_end),
            "hist_category_id": ragged_slices(log.category.astype(np.int64), hist_start, hist_end),
            "age": log.age[imp_user].astype(np.int64),
            "gender": log.gender[imp_user],
            "hour": hour.astype(np.int64),
            "weekday": weekday.astype(np.int64),
        }
    )
    is_test = np.tile(np.arange(m) >= m - spec.test_impressions, spec.n_users)
    return table.filter(pa.array(~is_test)), table.filter(pa.array(is_test))


def _random_item_in_category(
    item_category: np.ndarray, category: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    by_category = np.argsort(item_category, kind="stable")
    start = np.searchsorted(item_category[by_category], category)
    size = np.searchsorted(item_category[by_category], category, side="right") - start
    return by_category[start + (rng.random(len(category)) * size).astype(int)]


def _count_in_range(values: np.ndarray, query: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    """How many of values[start[i]:end[i]] equal query[i], for every i, in O(n log n)."""
    n = len(values)
    keys = np.sort(values.astype(np.int64) * n + np.arange(n))
    q = query.astype(np.int64) * n
    return np.searchsorted(keys, q + end) - np.searchsorted(keys, q + start)
