import json
import subprocess
import sys
from pathlib import Path

import pytest

from model.config import DINConfig, TrainConfig
from model.train import run

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("n", "length", "shorter"), [(200, 50, 50), (20, 100, 20)])
def test_macs_counts_the_split_first_layer_as_a_quarter_of_the_tiled_one(n, length, shorter):
    from devtools.bench_model import macs

    cfg = DINConfig(attention_hidden=(32, 16), mlp_hidden=(200, 80))
    fd = 64
    # tiled: every pair runs 4·FD -> 32 -> 16 -> 1, plus pooling; the MLP runs once per candidate
    mlp = n * (128 * 200 + 200 * 80 + 80)
    tiled = n * length * (4 * fd * 32 + 32 * 16 + 16 + fd) + mlp
    # serving: FD×32 rows and a bias term for each of the shorter side's items, then FD -> 32 -> 16
    # -> 1 per pair
    serving = 2 * shorter * fd * 32 + n * length * (fd * 32 + 32 * 16 + 16 + fd) + mlp
    assert macs(cfg, fd, 0, n, length, "onnx_tiled") == tiled
    assert macs(cfg, fd, 0, n, length, "serving_graph") == serving


def test_quick_benchmark_writes_json_rows_and_the_readme_table(tmp_path):
    run(DINConfig(), TrainConfig(data="synthetic", out=str(tmp_path / "run"), epochs=1, progress=False))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench_model:start -->\nold\n<!-- bench_model:end -->\nrest\n")
    cmd = [
        sys.executable,
        str(ROOT / "scripts" / "bench_model.py"),
        "--run",
        str(tmp_path / "run"),
        "--quick",
        "--runs",
        "200",
        "--json",
        str(tmp_path / "b.json"),
        "--readme",
        str(readme),
    ]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    result = json.loads((tmp_path / "b.json").read_text())
    assert result["sgemm_gflops"] > 0
    assert {r["variant"] for r in result["rows"]} == {"torch_eager", "onnx_tiled", "serving_graph"}
    for r in result["rows"]:
        assert (r["n"], r["l"], r["threads"]) == (200, 50, 2)
        assert 0 < r["p50_ms"] <= r["p99_ms"] and r["macs"] > 0
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("rest\n") and "old" not in text
    assert "| 200 | 50 | 2 |" in text


def test_runs_below_200_are_refused(tmp_path):
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_model.py"), "--runs", "10"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 2 and "--runs must be >= 200" in out.stderr


@pytest.mark.parametrize("name", ["bench_train", "bench_model"])
def test_readme_block_must_exist(tmp_path, name):
    from devtools.benchutil import replace_readme_block

    (tmp_path / "R.md").write_text("no markers\n")
    with pytest.raises(ValueError, match=name):
        replace_readme_block(tmp_path / "R.md", name, "x")
