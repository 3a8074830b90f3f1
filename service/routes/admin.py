"""Operator endpoints, behind a bearer token; disabled unless DIN_ADMIN_TOKEN is set."""

from __future__ import annotations

import secrets
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.deps import ServicesDep
from service.errors import Disabled, Unauthorized, errors_of
from service.model_slot import ReloadReport

bearer = HTTPBearer(auto_error=False, description="DIN_ADMIN_TOKEN")


async def require_admin(
    services: ServicesDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    settings = services.settings
    if settings.admin_token is None:
        raise Disabled("admin endpoints are disabled: set DIN_ADMIN_TOKEN to enable them")
    expected = settings.admin_token.get_secret_value().encode()
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), expected):
        raise Unauthorized(
            "a valid 'Authorization: Bearer <DIN_ADMIN_TOKEN>' header is required", ("header",)
        )


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.post(
    "/reload",
    responses=errors_of(401, 404)
    | {409: {"description": "the new version failed; the old one still serves", "model": ReloadReport}},
)
async def reload(
    services: ServicesDep,
    force: Annotated[bool, Query(description="retry a version that already failed")] = False,
) -> JSONResponse:
    """Loads, validates and warms up the version the repository's `current` pointer names, then
    swaps it in. Requests in flight finish on the old model."""
    report = await services.models.reload(force=force)
    return JSONResponse(asdict(report), status_code=409 if report.result == "failed" else 200)
