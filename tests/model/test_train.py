import json

import pytest

from model.config import DINConfig, TrainConfig
from model.din import Checkpoint
from model.train import main, run
from tests.helpers import served_log

METRICS = {"auc", "gauc", "logloss", "mean_ctr", "click_rate", "calibration", "ece"}


@pytest.fixture(scope="module")
def din_vs_mean_base(tmp_path_factory):
    """A short run of each on the synthetic generator, same data, same epochs, same seed."""
    out = tmp_path_factory.mktemp("runs")

    def tc(name: str) -> TrainConfig:
        return TrainConfig(data="synthetic", out=str(out / name), epochs=3, patience=3, progress=False)

    din = run(DINConfig(model="din"), tc("din"))
    base = run(DINConfig(model="base", base_pooling="mean"), tc("base"))
    return out, din, base


def test_a_short_synthetic_run_of_din_beats_the_mean_pooling_base_model(din_vs_mean_base):
    _, din, base = din_vs_mean_base
    # GAUC, the paper's metric. Normalising the behaviours alone lifted both (the BaseModel most, as
    # its profile and context embeddings now pass as they are); DIN's edge here is about 0.02.
    assert din["test"]["gauc"] > base["test"]["gauc"] + 0.015


def test_training_writes_metrics_checkpoint_and_curves(din_vs_mean_base):
    out, _, _ = din_vs_mean_base
    metrics = json.loads((out / "din" / "metrics.json").read_text())
    assert set(metrics["test"]) == set(metrics["valid"]) == METRICS
    assert (
        metrics["best_epoch"]
        == max(range(len(metrics["history"])), key=lambda i: metrics["history"][i]["valid"]["gauc"]) + 1
    )
    assert metrics["epoch_seconds"] > 0 and metrics["data"].startswith("synthetic")
    assert metrics["config"]["model"]["model"] == "din" and metrics["config"]["train"]["epochs"] == 3
    assert (out / "din" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    ckpt = Checkpoint.load(str(out / "din" / "ckpt.pt"))
    assert ckpt.extra["test"] == metrics["test"] and ckpt.config.model == "din"


def test_early_stopping_keeps_the_best_validation_epoch(tmp_path):
    r = run(
        DINConfig(),
        TrainConfig(data="synthetic", out=str(tmp_path), epochs=6, patience=1, lr=0.05, progress=False),
    )
    gaucs = [h["valid"]["gauc"] for h in r["history"]]
    assert r["valid"]["gauc"] == max(gaucs) and r["best_epoch"] == gaucs.index(max(gaucs)) + 1
    assert len(gaucs) == 6 or gaucs[-1] < max(gaucs)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "dien"], "--model must be one of din, base"),
        (["--epochs", "0"], "--epochs must be >= 1"),
        (["--data", "/no/such/folder"], "--data /no/such/folder: no such folder"),
        (["--valid-fraction", "1.5"], "--valid-fraction"),
        (["--embed-dim", "x"], "--embed-dim"),
    ],
)
def test_bad_cli_arguments_exit_with_an_error_naming_the_flag(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exc:
        main([*args, "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_cli_trains_the_base_model(tmp_path, capsys):
    main(["--data", "synthetic", "--model", "base", "--out", str(tmp_path), "--epochs", "1", "--no-progress"])
    assert json.loads((tmp_path / "metrics.json").read_text())["config"]["model"]["model"] == "base"
    assert "test AUC" in capsys.readouterr().out


@pytest.mark.slow
def test_training_on_served_logs_splits_by_time_and_warm_starts_with_new_ids(tmp_path):
    import numpy as np

    from model.data import load_tables
    from model.onnx_export import export_bundle
    from model.synthetic import SyntheticSpec, generate

    train, _ = generate(SyntheticSpec(n_users=1500, max_history=20))
    served_log(train, tmp_path / "day1")
    tables = load_tables(str(tmp_path / "day1"), 20, 0)
    assert tables.valid is not None and "split by time" in tables.source
    fit_ts, valid_ts, test_ts = (np.array(t["ts"]) for t in (tables.train, tables.valid, tables.test))
    assert fit_ts.max() <= valid_ts.min() and valid_ts.max() <= test_ts.min()
    n = len(fit_ts) + 2 * len(test_ts)  # 10,500 rows: the newest 5% tests, the 5% before validate
    assert len(valid_ts) == len(test_ts) == max(round(0.05 * n), min(1000, n // 8))

    day1 = run(DINConfig(), TrainConfig(data=str(tmp_path / "day1"), out=str(tmp_path / "r1"), epochs=3,
                                         progress=False, max_history=20))  # fmt: skip
    assert day1["test"]["gauc"] > 0.6  # learns from its logs, judged on the newest of them
    assert day1["calibration"]["fitted_on"] == "validation slice"
    assert abs(day1["test"]["calibration"] - 1) < 0.15  # its CTRs are the click rates of served traffic

    served_log(train, tmp_path / "day2", first_item=100_000)  # every item id is new
    day2 = run(DINConfig(embed_dim=4), TrainConfig(data=str(tmp_path / "day2"), out=str(tmp_path / "r2"),
                                                    epochs=1, progress=False, max_history=20,
                                                    init_from=str(tmp_path / "r1")))  # fmt: skip
    ckpt1, ckpt2 = (
        Checkpoint.load(str(tmp_path / "r1/ckpt.pt")),
        Checkpoint.load(str(tmp_path / "r2/ckpt.pt")),
    )
    assert ckpt2.config == ckpt1.config  # the architecture is the run it started from
    v1, v2 = ckpt1.space.vocabs["item_id"], ckpt2.space.vocabs["item_id"]
    assert set(v1.keys.tolist()) < set(v2.keys.tolist()) and len(v2) == len(v1) + len(
        set(v2.keys) - set(v1.keys)
    )
    assert day2["test"]["gauc"] > 0.5
    # The bundle maps the raw ids through the extended vocabularies (export checks torch = onnx).
    export_bundle(tmp_path / "r2/ckpt.pt", tmp_path / "b2", version="v2")
