"""POST /score: thin; the work is in service.ranking."""

from __future__ import annotations

import orjson
from fastapi import APIRouter, Response

from service import ranking
from service.body import json_route
from service.deps import DeadlineDep, MetricsDep, RunnerDep, ScoreBody, SettingsDep, StoreDep
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
) -> Response:
    """Ranks the candidates for the user by predicted CTR, in one model run. 503 with Retry-After
    when the service is overloaded or the request's deadline (X-Deadline-Ms) passed."""
    body = await ranking.score(req, runner, store, metrics, settings, deadline)
    # Serialised directly: FastAPI's generic response encoding cost more than the model run.
    return Response(orjson.dumps(body), media_type="application/json")
