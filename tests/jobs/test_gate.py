"""The gate looks at what a new version will serve: GAUC, logloss and calibration against the serving
version on the newest slice, and the new version's own CTRs on the current context."""

from __future__ import annotations

import calendar
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contracts.bundle import load_bundle
from jobs.gate import Margins, judge, live_sample, live_shift, psi
from model.config import DINConfig, TrainConfig
from model.data import infer_schema
from model.evaluation import gauc
from model.onnx_export import export_bundle
from model.synthetic import SyntheticSpec, generate
from model.train import run

AT_20 = calendar.timegm((2026, 12, 7, 20, 30, 0))  # a Monday, 20:30 UTC
METRICS = {"gauc": 0.8, "logloss": 0.5, "calibration": 1.0}


def one_hour(table: pa.Table, hour: int = 19) -> pa.Table:
    return table.set_column(table.column_names.index("hour"), "hour", pa.array(np.full(table.num_rows, hour)))


def test_psi_is_zero_for_the_same_distribution_and_large_for_a_saturated_one():
    rng = np.random.default_rng(0)
    ctr = rng.beta(2, 8, 5000)
    assert psi(ctr, rng.permutation(ctr)) == pytest.approx(0, abs=1e-9)
    assert psi(ctr, np.full(5000, 0.979)) > 5


def test_the_live_sample_is_the_newest_rows_with_the_current_context():
    train, _ = generate(SyntheticSpec(n_users=50, max_history=5))
    sample = live_sample(train, infer_schema(train), AT_20, rows=30)
    assert sample.num_rows == 30 and sample["user_id"].to_pylist() == train["user_id"].to_pylist()[-30:]
    assert set(sample["hour"].to_pylist()) == {20} and set(sample["weekday"].to_pylist()) == {0}


def test_each_check_refuses_alone_and_says_what_would_let_it_through():
    passed = judge(METRICS, METRICS, 0.01, Margins())
    assert passed.passed and "test GAUC 0.8000 vs serving 0.8000" in passed.reason
    cases = {
        "--gauc-margin": (METRICS | {"gauc": 0.79}, 0.01),
        "--logloss-margin": (METRICS | {"logloss": 0.52}, 0.01),
        "--calibration-margin": (METRICS | {"calibration": 1.5}, 0.01),
        "--shift-margin": (METRICS, 1.3),
    }
    for flag, (candidate, shift) in cases.items():
        refused = judge(candidate, METRICS, shift, Margins())
        assert not refused.passed and list(refused.needed) == [flag], refused
        assert (
            "(all: test GAUC" in refused.reason or flag == "--shift-margin"
        )  # every figure, not only the failed
        loosened = Margins(**{flag.removeprefix("--").removesuffix("-margin"): refused.needed[flag]})
        assert judge(candidate, METRICS, shift, loosened).passed  # the margin it names lets it through


def test_on_served_logs_with_position_bias_the_better_model_wins_within_positions():
    """Logs the serving version ranked: the k-th position is clicked 1/k as often. A candidate that
    knows each item's appeal loses to the serving version on per-user GAUC (the serving version
    put the clicked items on top) and wins within each position, which the gate then compares."""
    rng = np.random.default_rng(0)
    requests, k = 4000, 5
    appeal = rng.uniform(0.05, 0.6, size=(requests, k))
    serving = appeal + rng.normal(0, 0.25, size=appeal.shape)  # a noisier guess of the appeal
    order = np.argsort(-serving, axis=1)  # the serving version's ranking is what was shown
    shown = np.take_along_axis(appeal, order, axis=1)
    clicks = rng.random(shown.shape) < shown / np.arange(1, k + 1)
    users = np.repeat(np.arange(requests) // 4, k)  # four visits a user
    ranks = np.tile(np.arange(1, k + 1), requests)
    labels = clicks.ravel().astype(np.float32)
    by_serving = np.take_along_axis(serving, order, axis=1).ravel()
    by_candidate = shown.ravel()  # the candidate knows the appeal
    assert gauc(users, labels, by_serving) > gauc(users, labels, by_candidate)  # the incumbent's edge
    assert gauc(ranks, labels, by_candidate) > gauc(ranks, labels, by_serving) + 0.02

    def metrics(scores: np.ndarray) -> dict[str, float]:
        return METRICS | {"gauc": gauc(users, labels, scores), "position_auc": gauc(ranks, labels, scores)}

    verdict = judge(metrics(by_candidate), metrics(by_serving), 0.01, Margins())
    assert verdict.passed and "AUC within served positions" in verdict.reason
    refused = judge(metrics(by_serving), metrics(by_candidate), 0.01, Margins())
    assert not refused.passed and list(refused.needed) == ["--gauc-margin"]
    # Without positions (data that was not served), GAUC decides as before.
    assert judge(METRICS | {"gauc": 0.79}, METRICS | {"position_auc": 0.9}, 0.01, Margins()).needed


@pytest.mark.slow
def test_a_model_fine_tuned_on_one_hour_of_traffic_is_refused_if_its_ctrs_jump_the_next_hour(tmp_path):
    """The day-5 case: a cold model fine-tuned on logs whose every impression was at 19:00, served at
    20:00. With every MLP input normalised (the recipe before ``norm_scope``), the hour's embedding
    had no variance to divide by, and the next hour's CTRs jumped: the gate refuses it. Today's
    recipe keeps them where they were, and passes."""
    train, test = generate(SyntheticSpec(n_users=800, max_history=20, seed=3))
    data = tmp_path / "hour19"
    data.mkdir()
    pq.write_table(one_hour(train), data / "train.parquet")
    pq.write_table(one_hour(test), data / "test.parquet")
    shifts = {}
    for name, cfg, dropout in (("before", DINConfig(norm_scope="all"), 0.0), ("today", DINConfig(), 0.01)):
        cold, warm = tmp_path / f"{name}-cold", tmp_path / f"{name}-warm"
        common = TrainConfig(progress=False, max_history=20, id_dropout=dropout)
        run(cfg, replace(common, data="synthetic", out=str(cold), epochs=2))
        run(cfg, replace(common, data=str(data), init_from=str(cold), out=str(warm), epochs=4))
        export_bundle(warm / "ckpt.pt", tmp_path / f"{name}-bundle", version=name)
        shifts[name] = live_shift(load_bundle(tmp_path / f"{name}-bundle"), one_hour(test), AT_20)
    refused = judge(METRICS, METRICS, shifts["before"], Margins())
    assert not refused.passed and "its CTRs shift on the current context" in refused.reason, shifts
    assert shifts["today"] < 0.05, shifts
    assert judge(METRICS, METRICS, shifts["today"], Margins()).passed


@pytest.mark.slow
def test_a_context_value_and_items_training_never_saw_score_as_ordinary_ones(tmp_path):
    """A model trained from scratch on one hour of traffic, scored at another hour (an unknown id),
    and on candidates that are all new items: CTRs near the model's own on the same rows, not
    saturated."""
    from model.data import encode
    from model.din import Checkpoint
    from model.loop import predict

    train, test = generate(SyntheticSpec(n_users=800, max_history=20, seed=5))
    data = tmp_path / "hour19"
    data.mkdir()
    pq.write_table(one_hour(train), data / "train.parquet")
    pq.write_table(one_hour(test), data / "test.parquet")
    run(DINConfig(), TrainConfig(data=str(data), out=str(tmp_path / "run"), epochs=3, progress=False,
                                 max_history=20))  # fmt: skip
    ckpt = Checkpoint.load(str(tmp_path / "run" / "ckpt.pt"))
    model, rows = ckpt.build(), one_hour(test)

    def ctr(table: pa.Table) -> np.ndarray:
        return predict(model, encode(table, ckpt.space, 20))

    known = ctr(rows)
    new_hour = ctr(one_hour(rows, 20))
    items = np.arange(rows.num_rows, dtype=np.int64) + 10**12
    new_items = ctr(rows.set_column(rows.column_names.index("item_id"), "item_id", pa.array(items)))
    assert psi(known, new_hour) < 0.1 and abs(new_hour.mean() / known.mean() - 1) < 0.1
    assert abs(new_items.mean() / known.mean() - 1) < 0.25
    for scored in (new_hour, new_items):
        assert (scored > 0.99).mean() <= (known > 0.99).mean() + 0.02  # no more saturated than before
