"""Shared fixtures. Real data is read from ../shared/data and never copied; tests skip without it."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from model.din import DINConfig
from model.export import export_bundle
from model.train import TrainConfig, run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # scripts import as modules

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


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
