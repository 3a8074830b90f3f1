"""Dependencies as Annotated aliases; tests override the getters instead of monkeypatching."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.metrics import Metrics
from service.scorer import Scorer
from service.settings import Settings
from service.store import BehaviorStore


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_scorer(request: Request) -> Scorer:
    return request.app.state.scorer


def get_store(request: Request) -> BehaviorStore:
    return request.app.state.store


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
ScorerDep = Annotated[Scorer, Depends(get_scorer)]
StoreDep = Annotated[BehaviorStore, Depends(get_store)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
