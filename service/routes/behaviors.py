"""POST /events and POST /profile: thin; the work is in service.behaviors."""

from __future__ import annotations

from fastapi import APIRouter

from service import behaviors
from service.body import json_route
from service.deps import EventsBody, MetricsDep, ModelsDep, ProfileBody, RunnerDep, SettingsDep, StoreDep
from service.schemas import EventsRequest, EventsResponse, ProfileRequest

router = APIRouter(tags=["behaviours"])


@router.post("/events", **json_route(EventsRequest, response_model=EventsResponse))
async def append_events(
    req: EventsBody, models: ModelsDep, store: StoreDep, metrics: MetricsDep, settings: SettingsDep
) -> EventsResponse:
    """Appends behaviours to their users' histories (atomically, capped to the newest N)."""
    return await behaviors.append_events(req, models, store, metrics, settings)


@router.post("/profile", **json_route(ProfileRequest, status_code=204))
async def upsert_profile(req: ProfileBody, runner: RunnerDep, store: StoreDep) -> None:
    """Creates or updates profile features of a user."""
    await behaviors.upsert_profile(req, runner, store)
