"""scripts/redeploy.py before and around training: arguments and data checked first, in seconds and
one line, the gate on data of other features, --bundle and its data, --init-from serving. (The roll
out to a live server under load: tests/jobs/test_redeploy.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from contracts.keys import Keys
from contracts.repository import ModelRepository
from devtools.stack import ANY_VERDICT
from jobs.feedback import Exporter
from jobs.redeploy import main as redeploy
from model.synthetic import SyntheticSpec, generate
from tests.helpers import REDIS_URL, redis_prefix

ROOT = Path(__file__).resolve().parents[2]
TORCH_CHECK = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    if sys.argv[0] == "-m":
        sys.argv = sys.argv[1:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("torch imported" if "torch" in sys.modules else "torch not imported", file=sys.stderr)
"""


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["scripts/redeploy.py", "--epochs", "0"], "--epochs"),
        (["scripts/redeploy.py", "--data", "/no/such/folder"], "--data /no/such/folder"),
        (["scripts/redeploy.py", "--bogus"], "--bogus"),
        (["scripts/redeploy.py", "--rollback", "--epochs", "3"], "--rollback"),
        (["scripts/redeploy.py", "--bundle", "/no/such/bundle"], "--bundle"),
        (["-m", "model.train", "--init-from", "/no/run"], "--init-from"),
        (["-m", "model.export", "--run", "/no/run", "--bundle", "b"], "--run"),
        (["scripts/experiment.py", "status", "--alpha", "2"], "--alpha"),
        (["-m", "jobs.feedback", "export"], "--out"),
    ],
)
def test_a_bad_argument_is_one_line_naming_it_before_torch_is_imported(argv, named):
    done = subprocess.run(
        [sys.executable, "-c", TORCH_CHECK, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert lines[-1] == "torch not imported"
    assert len(lines) == 2 and named in lines[0] and "Traceback" not in done.stderr, done.stderr


@pytest.fixture
def repo(trained, tmp_path) -> ModelRepository:
    """The synthetic model serving: it takes age, gender, hour and weekday."""
    repo = ModelRepository(tmp_path / "models")
    repo.set_current(repo.publish(trained[1]))
    return repo


@pytest.fixture
def behaviours_only(tmp_path) -> Path:
    """Data in the sample layout with behaviours and candidates only (as amazon-sports has)."""
    out = tmp_path / "behaviours-only"
    out.mkdir()
    for name, table in zip(
        ("train", "test"), generate(SyntheticSpec(n_users=300, max_history=20)), strict=True
    ):
        pq.write_table(table.drop_columns(["age", "gender", "hour", "weekday"]), out / f"{name}.parquet")
    return out


def deploy(repo: ModelRepository, tmp_path: Path, *args: str) -> int:
    return redeploy(["--models", str(repo.root), "--work", str(tmp_path / "work"), "--nice", "0", *args])


def test_data_without_the_serving_versions_features_is_said_and_gated_with_them_missing(
    repo, behaviours_only, tmp_path, capsys
):
    args = ["--data", str(behaviours_only), "--epochs", "1", "--max-history", "20", "--version", "b1"]
    args += ANY_VERDICT  # the serving model, scored without its profile and context, wins
    assert deploy(repo, tmp_path, *args) == 0
    out = capsys.readouterr().out
    assert "it takes ['age', 'gender', 'hour', 'weekday'], which --data lacks: scored as missing" in out
    assert out.index("scored as missing") < out.index("[1/7] training")  # said before training
    assert "vs serving 0.8" in out and repo.current() == "b1"  # scored, and scored well, without them


def test_a_bundle_is_gated_on_its_training_data_unless_told_and_never_on_data_lacking_its_features(
    repo, trained, behaviours_only, tmp_path, capsys
):
    other = ModelRepository(tmp_path / "other")
    assert deploy(other, tmp_path, "--bundle", str(trained[1])) == 0
    out = capsys.readouterr().out
    assert "--bundle without --data: the gate scores the data it was trained on, synthetic" in out
    assert other.current() == "test-v1"

    assert deploy(other, tmp_path, "--bundle", str(trained[1]), "--data", str(behaviours_only)) == 1
    err = capsys.readouterr().err
    assert "already published" in err  # refused before anything is scored
    fresh = ModelRepository(tmp_path / "fresh")
    assert deploy(fresh, tmp_path, "--bundle", str(trained[1]), "--data", str(behaviours_only)) == 1
    err = capsys.readouterr().err
    assert f"takes ['age', 'gender', 'hour', 'weekday'], which --data {behaviours_only} lacks" in err
    assert len(err.splitlines()) == 1 and fresh.current() is None


def test_redeploy_on_an_export_that_wrote_nothing_yet_says_why_in_one_line(repo, tmp_path, capsys):
    with redis_prefix() as prefix:
        import redis

        with redis.Redis.from_url(REDIS_URL) as r:
            summary = Exporter(r, Keys(prefix), tmp_path / "logs", 1800).export()
    assert summary.impressions == 0
    assert deploy(repo, tmp_path, "--data", str(tmp_path / "logs"), "--init-from", "serving") == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "nothing exported yet" in err and "--label-window-seconds 0" in err


def test_init_from_serving_is_the_run_the_serving_versions_manifest_names(repo, trained, tmp_path):
    from model.config import parse_args

    _, tc = parse_args(["--init-from", "serving"], models=repo.root)
    assert tc.init_from == str(trained[0].parent.resolve())
    manifest = json.loads((repo.path("test-v1") / "manifest.json").read_text())
    assert manifest["run"] == tc.init_from
    assert manifest["training"]["data_arg"] == "synthetic"
    with pytest.raises(SystemExit):  # no repository, nothing serving: one line, exit 2
        parse_args(["--init-from", "serving"], models=tmp_path / "empty")
