import pytest


def result(auc, gauc, seconds=10.0, epoch=3):
    return {"test": {"auc": auc, "gauc": gauc, "logloss": 0.5}, "epoch_seconds": seconds, "best_epoch": epoch}


def test_table_reports_rela_impr_over_the_better_base():
    from devtools.bench_train import table

    results = {
        "ds": {
            "BaseModel (sum)": result(0.8, 0.75),
            "BaseModel (mean)": result(0.8, 0.70),
            "DIN+Dice+MBA": result(0.82, 0.7625),
        }
    }
    md = table(results, ["ds"])
    # (0.7625 - 0.5) / (0.75 - 0.5) - 1 = +5.0%, over the sum base (the better one)
    row = next(line for line in md.splitlines() if line.startswith("| DIN+Dice+MBA |"))
    assert "GAUC 0.7625" in row and "RelaImpr +5.0%" in row
    assert next(line for line in md.splitlines() if line.startswith("| DIN |")).endswith("| — |")


def test_unknown_dataset_folder_is_a_cli_error(tmp_path, capsys):
    from devtools import bench_train

    with pytest.raises(SystemExit) as exc:
        bench_train.main(["--data-root", str(tmp_path), "--datasets", "nope"])
    assert exc.value.code == 2 and "nope" in capsys.readouterr().err
