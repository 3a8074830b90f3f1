"""Operator endpoints, behind an admin-scoped API key or DIN_ADMIN_TOKEN; disabled without either."""

from __future__ import annotations

import secrets
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from contracts.api_keys import verify
from service.auth import MAX_TOKEN
from service.deps import ServicesDep
from service.errors import Disabled, Forbidden, Unauthorized, errors_of
from service.model_slot import ReloadReport

bearer = HTTPBearer(auto_error=False, description="an API key with the admin scope, or DIN_ADMIN_TOKEN")


async def require_admin(
    services: ServicesDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> None:
    """An API key with the ``admin`` scope, or DIN_ADMIN_TOKEN; 404 when neither is configured."""
    settings, keys = services.settings, services.keys
    if settings.admin_token is None and not keys.enabled:
        raise Disabled("admin endpoints are disabled: set DIN_ADMIN_TOKEN or API keys to enable them")
    loc = ("header", "authorization")
    if credentials is None:
        raise Unauthorized("'Authorization: Bearer <admin key or DIN_ADMIN_TOKEN>' is required", loc)
    token = credentials.credentials
    if settings.admin_token is not None:
        expected = settings.admin_token.get_secret_value().encode()
        if secrets.compare_digest(token.encode("utf-8", "surrogatepass"), expected):
            return
    entry = verify(keys.entries(), token) if keys.enabled and len(token) <= MAX_TOKEN else None
    if entry is None:
        raise Unauthorized("the admin key or token is not valid", loc)
    if "admin" not in entry.scopes:
        raise Forbidden("this API key lacks the 'admin' scope", loc)


router = APIRouter(prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)])


@router.post(
    "/reload",
    responses=errors_of(401, 403, 404)
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
