"""Service tests run against the real Redis at 127.0.0.1:6379 (DB 15, a unique key prefix per test)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from service.main import create_app
from service.settings import Settings


def changed(settings: Settings, **changes) -> Settings:
    """A copy with changes, validated like the environment is (model_copy would skip that)."""
    return Settings.model_validate(settings.model_dump() | changes)


@pytest.fixture
def client(settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as c:
        yield c
