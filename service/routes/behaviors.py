"""POST /events and POST /profile: thin; the work is in service.behaviors."""

from __future__ import annotations

from fastapi import APIRouter

from service import behaviors
from service.body import request_body_openapi
from service.deps import EventsBody, MetricsDep, ProfileBody, RunnerDep, SettingsDep, StoreDep
from service.errors import errors_of
from service.schemas import EventsRequest, EventsResponse, ProfileRequest

router = APIRouter()


@router.post(
    "/events",
    response_model=EventsResponse,
    responses=errors_of(413, 415, 422, 503),
    openapi_extra=request_body_openapi(EventsRequest),
)
async def append_events(
    req: EventsBody, runner: RunnerDep, store: StoreDep, metrics: MetricsDep, settings: SettingsDep
) -> EventsResponse:
    """Appends behaviours to their users' histories (atomically, capped to the newest N)."""
    return await behaviors.append_events(req, runner, store, metrics, settings)


@router.post(
    "/profile",
    status_code=204,
    responses=errors_of(413, 415, 422, 503),
    openapi_extra=request_body_openapi(ProfileRequest),
)
async def upsert_profile(req: ProfileBody, runner: RunnerDep, store: StoreDep) -> None:
    """Creates or updates profile features of a user."""
    await behaviors.upsert_profile(req, runner, store)
