"""Service tests run against the real Redis at 127.0.0.1:6379 (DB 15, a unique key prefix per test)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from model.repository import ModelRepository
from service.main import create_app
from service.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/15"


@pytest.fixture
def models(trained, tmp_path) -> Path:
    """A model repository whose current version is the trained bundle."""
    repo = ModelRepository(tmp_path / "models")
    repo.set_current(repo.publish(trained[1]))
    return repo.root


@pytest.fixture
def settings(models) -> Iterator[Settings]:
    prefix = f"test:{uuid.uuid4().hex}:"
    yield Settings(models=models, redis_url=REDIS_URL, key_prefix=prefix, history_cap=50, max_candidates=300)
    r = redis.Redis.from_url(REDIS_URL)
    keys = list(r.scan_iter(match=f"{prefix}*"))
    if keys:
        r.delete(*keys)
    r.close()


def changed(settings: Settings, **changes) -> Settings:
    """A copy with changes, validated like the environment is (model_copy would skip that)."""
    return Settings.model_validate(settings.model_dump() | changes)


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c
