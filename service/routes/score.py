"""POST /score: thin; the work is in service.ranking."""

from __future__ import annotations

import uuid
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Response

from service import ranking
from service.body import json_route
from service.deps import (
    DeadlineDep,
    ImpressionsDep,
    MetricsDep,
    RunnerDep,
    ScoreBody,
    SettingsDep,
    StoreDep,
)
from service.ids import REQUEST_ID_PATTERN
from service.schemas import ScoreRequest, ScoreResponse

router = APIRouter()


@router.post("/score", **json_route(ScoreRequest, response_model=ScoreResponse))
async def score(
    req: ScoreBody,
    runner: RunnerDep,
    store: StoreDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    deadline: DeadlineDep,
    impressions: ImpressionsDep,
    x_request_id: Annotated[str | None, Header(pattern=REQUEST_ID_PATTERN)] = None,
) -> Response:
    """Ranks the candidates for the user by predicted CTR, in one model run. 503 with Retry-After
    when the service is overloaded or the request's deadline (X-Deadline-Ms) passed."""
    request_id = req.request_id or x_request_id or uuid.uuid4().hex
    body = await ranking.score(req, request_id, runner, store, metrics, settings, impressions, deadline)
    # Serialised directly: FastAPI's generic response encoding cost more than the model run.
    return Response(orjson.dumps(body), media_type="application/json", headers={"X-Request-Id": request_id})
