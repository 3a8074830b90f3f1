from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.deps import DrainDep, MetricsDep, ModelsDep, RunnerDep, StoreDep

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "draining for shutdown, or Redis unreachable"}})
async def readyz(runner: RunnerDep, store: StoreDep, drain: DrainDep) -> JSONResponse:
    """Ready when a model is loaded, Redis answers, and the process is not shutting down."""
    if drain.draining:
        return JSONResponse({"model": runner.version, "redis": "unknown", "status": "draining"}, 503)
    redis_ok = await store.ping()
    body = {"model": runner.version, "redis": "ok" if redis_ok else "unreachable"}
    return JSONResponse(body, status_code=200 if redis_ok else 503)


@router.get("/model")
async def model(models: ModelsDep) -> dict[str, Any]:
    """The version serving, the version the repository's pointer names, the last reload attempt,
    and the loaded bundle's manifest."""
    return models.status()


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(m: MetricsDep, store: StoreDep) -> Response:
    """Prometheus text format; with several workers, the sum over all of them."""
    return Response(m.scrape(await store.dead_letter_counts()), media_type=CONTENT_TYPE_LATEST)
