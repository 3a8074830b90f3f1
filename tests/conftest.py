"""Shared fixtures. Real data is read from ../shared/data and never copied; tests skip without it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.repository import ModelRepository
from devtools.redis_cluster import LocalCluster
from model.config import DINConfig, TrainConfig
from model.onnx_export import export_bundle
from model.train import run
from service.settings import Settings
from tests.helpers import REDIS_URL, redis_prefix

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


EXPORT_CACHE = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """One cache of traced serving graphs for the session's exports, theirs and those of the
    scripts it runs (model.export), instead of the user's own cache folder."""
    if "DIN_EXPORT_CACHE" not in os.environ:
        os.environ["DIN_EXPORT_CACHE"] = tempfile.mkdtemp(prefix="din-export-cache-")
        config.stash[EXPORT_CACHE] = os.environ["DIN_EXPORT_CACHE"]


def pytest_unconfigure(config: pytest.Config) -> None:
    if EXPORT_CACHE in config.stash:
        shutil.rmtree(config.stash[EXPORT_CACHE], ignore_errors=True)


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory) -> Iterator[LocalCluster]:
    """A real Redis Cluster, 3 masters with a replica each, of local processes on spare ports."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        pytest.skip("redis-server and redis-cli are not installed")
    cluster = LocalCluster(tmp_path_factory.mktemp("redis-cluster")).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """A small DIN trained on SYNTHETIC data (all four feature groups), and its bundle."""
    root = tmp_path_factory.mktemp("service-model")
    run(
        DINConfig(),
        TrainConfig(data="synthetic", out=str(root / "run"), epochs=2, progress=False, max_history=20),
    )
    export_bundle(root / "run" / "ckpt.pt", root / "bundle", version="test-v1")
    return root / "run" / "ckpt.pt", root / "bundle"


@pytest.fixture(scope="session")
def trained_other(tmp_path_factory) -> Path:
    """The bundle of another small DIN (other seed, one epoch): a canary that scores differently."""
    root = tmp_path_factory.mktemp("service-model-other")
    run(
        DINConfig(),
        TrainConfig(
            data="synthetic", out=str(root / "run"), epochs=1, progress=False, max_history=20, seed=1
        ),
    )
    export_bundle(root / "run" / "ckpt.pt", root / "bundle", version="test-other")
    return root / "bundle"


@pytest.fixture
def models(trained, tmp_path) -> Path:
    """A model repository whose current version is the trained bundle."""
    repo = ModelRepository(tmp_path / "models")
    repo.set_current(repo.publish(trained[1]))
    return repo.root


@pytest.fixture
def settings(models) -> Iterator[Settings]:
    with redis_prefix() as prefix:
        yield Settings(
            models=models, redis_url=REDIS_URL, key_prefix=prefix, history_cap=50, max_candidates=300
        )
