"""Dependencies as Annotated aliases over what ``lifespan`` put in ``app.state`` (POST /score, the
hot path, reads ``app.state`` itself: service.routes.score).

The getters are async on purpose: FastAPI runs a plain ``def`` dependency in a worker thread, and
six thread hops per request cost more than the rest of the request's Python."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.body import json_body
from service.metrics import Metrics
from service.model_slot import ModelSlot
from service.runner import ModelRunner
from service.schemas import EventsRequest, ProfileRequest
from service.settings import Settings
from service.shutdown import Drain
from service.store import BehaviorStore


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_models(request: Request) -> ModelSlot:
    return request.app.state.models


async def get_runner(request: Request) -> ModelRunner:
    """The model serving now; the request keeps it even if a reload swaps in another."""
    return request.app.state.models.runner


async def get_store(request: Request) -> BehaviorStore:
    return request.app.state.store


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_drain(request: Request) -> Drain:
    return request.app.state.drain


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelsDep = Annotated[ModelSlot, Depends(get_models)]
RunnerDep = Annotated[ModelRunner, Depends(get_runner)]
StoreDep = Annotated[BehaviorStore, Depends(get_store)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
DrainDep = Annotated[Drain, Depends(get_drain)]
EventsBody = Annotated[EventsRequest, Depends(json_body(EventsRequest))]
ProfileBody = Annotated[ProfileRequest, Depends(json_body(ProfileRequest))]
