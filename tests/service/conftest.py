"""Service tests run against the real Redis at 127.0.0.1:6379 (DB 15, a unique key prefix per test)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from model.din import DINConfig
from model.export import export_bundle
from model.train import TrainConfig, run
from service.main import create_app
from service.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/15"


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


@pytest.fixture
def settings(trained) -> Iterator[Settings]:
    prefix = f"test:{uuid.uuid4().hex}:"
    yield Settings(
        bundle=trained[1], redis_url=REDIS_URL, key_prefix=prefix, history_cap=50, max_candidates=300
    )
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=f"{prefix}*"))
    if keys:
        r.delete(*keys)
    r.close()


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c
