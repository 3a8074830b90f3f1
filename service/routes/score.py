"""POST /score: thin; the work is in service.scoring.

The route takes the bare Request and reads the app's services itself, where the other routes use a
FastAPI dependency: resolving dependencies on every call cost the event loop more than parsing the
candidates. The body and the X-Request-Id header are checked here by the same rules FastAPI would
apply, and published in the OpenAPI entry by hand.
"""

from __future__ import annotations

import os
import re

import orjson
from fastapi import APIRouter, Request, Response
from opentelemetry.trace import get_current_span

from contracts.ids import REQUEST_ID_PATTERN
from service import scoring
from service.auth import caller_id, require
from service.body import json_route, parse
from service.errors import InvalidInput
from service.payloads import ScoreRequest, ScoreResponse
from service.services import services_of

router = APIRouter(tags=["scoring"])
REQUEST_ID_HEADER = {
    "name": "x-request-id",
    "in": "header",
    "required": False,
    "schema": {
        "anyOf": [{"type": "string", "pattern": REQUEST_ID_PATTERN}, {"type": "null"}],
        "title": "X-Request-Id",
    },
}
_request_id = re.compile(REQUEST_ID_PATTERN)


def header_request_id(value: str | None) -> str | None:
    if value is not None and not _request_id.fullmatch(value):
        raise InvalidInput(
            "X-Request-Id must be 1 to 128 printable ASCII characters without spaces",
            ("header", "x-request-id"),
        )
    return value


@router.post(
    "/score", **json_route(ScoreRequest, response_model=ScoreResponse, parameters=[REQUEST_ID_HEADER])
)
async def score(request: Request) -> Response:
    """Ranks the candidates for the user by predicted CTR, in one model run. 503 with Retry-After
    when the service is overloaded or the request's deadline (X-Deadline-Ms) passed."""
    headers, services = request.headers, services_of(request)
    req = parse(ScoreRequest, await request.body(), headers.get("content-type"))
    if req.explain:  # it returns the user's stored history: a scope of its own
        require(request.scope, "explain", ("body", "explain"))
    from_header = header_request_id(headers.get("x-request-id"))  # checked even when the body has one
    request_id = req.request_id or from_header or os.urandom(16).hex()
    # The version serving this user now (their experiment arm); the request keeps it through a reload.
    runner, shadow = services.models.route(req.user_id)
    deadline = request.scope.get("state", {}).get("deadline")
    body = await scoring.score(req, request_id, services, runner, shadow, deadline, caller_id(request.scope))
    # Serialised directly: FastAPI's generic response encoding cost more than the model run.
    if get_current_span().is_recording():  # tracing on, and this request sampled
        with services.tracer.start_as_current_span("din.serialize"):
            content = orjson.dumps(body)
    else:
        content = orjson.dumps(body)
    return Response(content, media_type="application/json", headers={"X-Request-Id": request_id})
