"""Operations: liveness, readiness, the model serving, and the metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import ServicesDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "draining for shutdown, or Redis unreachable"}})
async def readyz(services: ServicesDep) -> JSONResponse:
    """Ready when a model is loaded, Redis answers, and the process is not shutting down."""
    runner = services.models.runner
    if services.drain.draining:
        return JSONResponse({"model": runner.version, "redis": "unknown", "status": "draining"}, 503)
    redis_ok = await services.store.ping()
    body = {"model": runner.version, "redis": "ok" if redis_ok else "unreachable"}
    return JSONResponse(body, status_code=200 if redis_ok else 503)


@router.get("/model")
async def model(services: ServicesDep) -> dict[str, Any]:
    """The version serving, the version the repository's pointer names, the last reload attempt,
    and the loaded bundle's manifest."""
    return services.models.status()


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(services: ServicesDep) -> Response:
    """Prometheus text format; with several workers, the sum over all of them."""
    dead_letters = await services.store.dead_letter_counts()
    return Response(services.metrics.scrape(dead_letters), media_type=CONTENT_TYPE_LATEST)
