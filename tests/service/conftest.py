"""Service tests run against the real Redis at 127.0.0.1:6379 (DB 15, a unique key prefix per test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from model.repository import ModelRepository
from service.main import create_app
from service.settings import Settings
from tests.helpers import REDIS_URL, redis_prefix


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


def changed(settings: Settings, **changes) -> Settings:
    """A copy with changes, validated like the environment is (model_copy would skip that)."""
    return Settings.model_validate(settings.model_dump() | changes)


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c
