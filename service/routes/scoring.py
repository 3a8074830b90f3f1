from __future__ import annotations

import orjson
from fastapi import APIRouter, Response

from service import events, scoring
from service.body import request_body_openapi
from service.deps import (
    DeadlineDep,
    EventsBody,
    MetricsDep,
    ProfileBody,
    ScoreBody,
    ScorerDep,
    SettingsDep,
    StoreDep,
)
from service.errors import errors_of
from service.schemas import EventsRequest, EventsResponse, ProfileRequest, ScoreRequest, ScoreResponse

router = APIRouter()


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses=errors_of(413, 415, 422, 503),
    openapi_extra=request_body_openapi(ScoreRequest),
)
async def score(
    req: ScoreBody,
    scorer: ScorerDep,
    store: StoreDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    deadline: DeadlineDep,
) -> Response:
    """Ranks the candidates for the user by predicted CTR, in one model run. 503 with Retry-After
    when the service is overloaded or the request's deadline (X-Deadline-Ms) passed."""
    body = await scoring.score(req, scorer, store, metrics, settings, deadline)
    # Serialised directly: FastAPI's generic response encoding cost more than the model run.
    return Response(orjson.dumps(body), media_type="application/json")


@router.post(
    "/events",
    response_model=EventsResponse,
    responses=errors_of(413, 415, 422, 503),
    openapi_extra=request_body_openapi(EventsRequest),
)
async def append_events(
    req: EventsBody, scorer: ScorerDep, store: StoreDep, metrics: MetricsDep, settings: SettingsDep
) -> EventsResponse:
    """Appends behaviours to their users' histories (atomically, capped to the newest N)."""
    return await events.append_events(req, scorer, store, metrics, settings)


@router.post(
    "/profile",
    status_code=204,
    responses=errors_of(413, 415, 422, 503),
    openapi_extra=request_body_openapi(ProfileRequest),
)
async def upsert_profile(req: ProfileBody, scorer: ScorerDep, store: StoreDep) -> None:
    """Creates or updates profile features of a user."""
    await events.upsert_profile(req, scorer, store)
