"""torchrun DistributedDataParallel on CPU (gloo): two real processes against one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from model import synthetic
from model.config import TrainConfig
from model.din import Checkpoint
from model.train import main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
# Without id dropout: its random masks differ between one process and two, and over two epochs the
# early stop then picks another epoch; what is compared here is the sharding and the all-reduce.
FLAGS = ["--epochs", "2", "--max-history", "20", "--no-progress", "--id-dropout", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """The synthetic generator's samples as Parquet, in row groups the processes can share out."""
    root = tmp_path_factory.mktemp("synthetic-parquet")
    train, test = synthetic.generate(synthetic.SyntheticSpec(max_history=20, seed=0))
    pq.write_table(train, root / "train.parquet", row_group_size=4000)
    pq.write_table(test, root / "test.parquet", row_group_size=4000)
    return root


def test_two_processes_learn_what_one_does_with_the_same_vocabulary_and_end_with_identical_weights(
    data, tmp_path
):
    main(["--data", str(data), "--stream", "--out", str(tmp_path / "one"), *FLAGS])
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "model.train",
         "--data", str(data), "--out", str(tmp_path / "two"), *FLAGS],
        check=True, cwd=ROOT, env=env, timeout=600,
    )  # fmt: skip
    one, two = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("one", "two"))
    assert two["processes"] == 2 and two["ranks_same_vocabulary"] is True
    assert two["ranks_same_weights_after_first_step"] is True and two["ranks_same_weights"] is True
    # Every row trained on once per epoch by one of the two processes.
    assert [h["samples"] for h in two["history"]] == [h["samples"] for h in one["history"]]
    assert abs(two["test"]["gauc"] - one["test"]["gauc"]) < 0.03  # within two-epoch run-to-run noise
    assert one["test"]["gauc"] > 0.75
    a, b = (Checkpoint.load(str(tmp_path / r / "ckpt.pt")).space for r in ("one", "two"))
    assert a.sizes() == b.sizes()
    for name in a.vocabs:
        np.testing.assert_array_equal(a.vocabs[name].keys, b.vocabs[name].keys)


def test_streaming_is_refused_for_data_that_is_not_parquet_and_for_a_warm_start(data, tmp_path, capsys):
    for argv in (
        ["--data", "synthetic"],
        ["--data", str(tmp_path)],
        ["--data", str(data), "--init-from", str(data)],
    ):
        with pytest.raises(SystemExit) as exc:
            main([*argv, "--stream"])
        assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "--data a folder with train and test Parquet" in err and "Traceback" not in err
    assert TrainConfig().stream is False  # the in-memory path stays the default
