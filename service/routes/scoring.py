from __future__ import annotations

import orjson
from fastapi import APIRouter, Response

from service import events, scoring
from service.deps import DeadlineDep, MetricsDep, ScoreBody, ScorerDep, SettingsDep, StoreDep
from service.errors import errors_of
from service.schemas import EventsRequest, EventsResponse, ProfileRequest, ScoreRequest, ScoreResponse

router = APIRouter()


@router.post(
    "/score",
    response_model=ScoreResponse,
    responses=errors_of(413, 422, 503),
    # The body is parsed by the ScoreBody dependency, so its schema is declared here.
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": ScoreRequest.model_json_schema()}},
        }
    },
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


@router.post("/events", response_model=EventsResponse, responses=errors_of(413, 422, 503))
async def append_events(
    req: EventsRequest, scorer: ScorerDep, store: StoreDep, metrics: MetricsDep, settings: SettingsDep
) -> EventsResponse:
    """Appends behaviours to their users' histories (atomically, capped to the newest N)."""
    return await events.append_events(req, scorer, store, metrics, settings)


@router.post("/profile", status_code=204, responses=errors_of(413, 422, 503))
async def upsert_profile(req: ProfileRequest, scorer: ScorerDep, store: StoreDep) -> None:
    """Creates or updates profile features of a user."""
    await events.upsert_profile(req, scorer, store)
