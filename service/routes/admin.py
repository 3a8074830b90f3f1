"""Operator endpoints, behind an admin-scoped API key or DIN_ADMIN_TOKEN; disabled without either."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from contracts.api_keys import verify
from contracts.erasure import ErasureReport, erase_users
from contracts.redis_client import REDIS_FAILURES, keys_for, sync_client
from service.auth import MAX_TOKEN
from service.body import json_route
from service.deps import ErasureBody, ServicesDep
from service.errors import Disabled, Forbidden, StoreUnavailable, Unauthorized, errors_of
from service.model_slot import ReloadReport
from service.payloads import ErasureRequest, ErasureResponse

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


router = APIRouter(
    prefix="/admin", tags=["admin"], dependencies=[Depends(require_admin)], responses=errors_of(401, 403, 404)
)


@router.post(
    "/reload",
    responses={
        409: {"description": "the new version failed; the old one still serves", "model": ReloadReport}
    },
)
async def reload(
    services: ServicesDep,
    force: Annotated[bool, Query(description="retry a version that already failed")] = False,
) -> JSONResponse:
    """Loads, validates and warms up the version the repository's `current` pointer names, then
    swaps it in. Requests in flight finish on the old model."""
    report = await services.models.reload(force=force)
    return JSONResponse(asdict(report), status_code=409 if report.result == "failed" else 200)


@router.post("/erase", **json_route(ErasureRequest, response_model=ErasureResponse))
async def erase(req: ErasureBody, services: ServicesDep) -> ErasureResponse:
    """Forgets users: deletes their history and profile, every entry of theirs in the impression,
    click, shadow and dead-letter streams, and leaves a tombstone so the feedback export drops their
    records still to come and removes them from the files it wrote before (its next pass, or
    `python -m jobs.erase --out DIR` now). Reads each stream once for all the users: send them together."""
    settings = services.settings
    keys = keys_for(settings.redis_url, settings.key_prefix)

    def run() -> ErasureReport:
        client = sync_client(settings.redis_url, settings.redis_write_timeout_ms / 1000 * 10)
        try:
            return erase_users(client, keys, req.users)
        finally:
            client.close()

    try:
        report = await asyncio.to_thread(run)
    except REDIS_FAILURES as e:
        raise StoreUnavailable(
            f"the erasure could not reach Redis ({type(e).__name__}); erasing again is safe",
            ("body", "users"),
        ) from None
    return ErasureResponse(**report.as_dict())
