"""POST /events and POST /profile: thin; the work is in service.recording."""

from __future__ import annotations

from fastapi import APIRouter

from service import recording
from service.body import json_route
from service.deps import CallerId, EventsBody, ProfileBody, ServicesDep
from service.payloads import EventsRequest, EventsResponse, ProfileRequest

router = APIRouter(tags=["behaviours"])


@router.post("/events", **json_route(EventsRequest, response_model=EventsResponse, rate_limited=True))
async def append_events(req: EventsBody, services: ServicesDep, key_id: CallerId) -> EventsResponse:
    """Appends behaviours to their users' histories (atomically, capped to the newest N). Each
    event counts against the caller's write rate (429 with Retry-After past it)."""
    return await recording.append_events(req, services, key_id)


@router.post("/profile", **json_route(ProfileRequest, status_code=204, rate_limited=True))
async def upsert_profile(req: ProfileBody, services: ServicesDep, key_id: CallerId) -> None:
    """Creates or updates profile features of a user (one write of the caller's rate)."""
    await recording.upsert_profile(req, services, key_id)
