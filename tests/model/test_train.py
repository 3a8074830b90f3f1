import json

import pytest

from model.din import Checkpoint, DINConfig
from model.train import TrainConfig, main, run


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
    assert din["test"]["gauc"] > base["test"]["gauc"] + 0.03  # GAUC, the paper's metric


def test_training_writes_metrics_checkpoint_and_curves(din_vs_mean_base):
    out, _, _ = din_vs_mean_base
    metrics = json.loads((out / "din" / "metrics.json").read_text())
    assert set(metrics["test"]) == {"auc", "gauc", "logloss"} and set(metrics["valid"]) == {
        "auc",
        "gauc",
        "logloss",
    }
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
