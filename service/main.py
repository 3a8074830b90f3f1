"""Assembles the app. Run with: python -m service --port 8000 (uvicorn's options, see service.__main__)"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from opentelemetry.trace import TracerProvider

from contracts.redis_client import async_client, close, is_cluster, keys_for
from service.auth import Authentication, KeyOnAccessLog, KeyRing, WriteLimit
from service.breaker import CircuitBreaker
from service.errors import install_error_handlers
from service.impressions import ImpressionLog
from service.limits import AdmissionControl, BodySizeLimit
from service.metrics import Metrics
from service.model_slot import ModelSlot
from service.openapi import model_openapi
from service.responses import ResponseCounter
from service.routes import admin, events, ops, score, ui
from service.services import Services
from service.settings import Settings
from service.shadow import ShadowScorer
from service.shutdown import Drain
from service.store import BehaviorStore
from service.tracing import instrument, instrument_redis, provider_from_env, shutdown

log = logging.getLogger("service")


# A cluster write retries through a failover (a replica takes over within the cluster's node
# timeout); a single server that stopped answering does not come back that fast.
CLUSTER_WRITE_RETRIES = 6


def configure_logging(level: str) -> None:
    """uvicorn configures only its own loggers; ours go to stderr in the same shape."""
    logger = logging.getLogger("service")
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, KeyOnAccessLog) for f in access.filters):
        access.addFilter(KeyOnAccessLog())


def create_app(settings: Settings | None = None, tracer_provider: TracerProvider | None = None) -> FastAPI:
    """``tracer_provider``: trace with this one (tests pass the SDK's with an in-memory exporter);
    without it, tracing is as the OTEL_* variables say (service.tracing), off by default."""
    settings = settings or Settings()  # fails fast on a bad environment, before serving anything
    configure_logging(settings.log_level)
    api_keys = KeyRing.from_settings(settings)  # a key file that is missing or bad stops the start
    provider = tracer_provider if tracer_provider is not None else provider_from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="onnx")
        models = ModelSlot(settings, executor, metrics)
        await models.start()
        # Pools of their own: reads on the scoring path give up fast and degrade; writes may wait longer,
        # since a write that fails is refused (503) and a spurious timeout would refuse it for nothing.
        cluster = is_cluster(settings.redis_url)
        client = async_client(settings.redis_url, settings.redis_timeout_ms / 1000)
        writer = async_client(
            settings.redis_url,
            settings.redis_write_timeout_ms / 1000,
            CLUSTER_WRITE_RETRIES if cluster else 0,
        )
        # The log's own client: it drops what fails instead of retrying (service.impressions).
        log_client = async_client(settings.redis_url, settings.redis_write_timeout_ms / 1000)
        keys = keys_for(settings.redis_url, settings.key_prefix)
        for c in (client, writer, log_client):
            instrument_redis(c, provider)
        breaker = CircuitBreaker(
            settings.redis_breaker_failures, settings.redis_breaker_reset_seconds, metrics
        )
        store = BehaviorStore(client, writer, keys, breaker, settings)
        impressions = ImpressionLog(
            log_client, keys.impressions(), settings, metrics.impressions_logged, metrics.impressions_dropped
        )
        shadow_log = ImpressionLog(
            log_client, keys.shadow(), settings, metrics.shadow_logged, metrics.shadow_dropped
        )
        shadow = ShadowScorer(shadow_log, metrics, settings.shadow_max_in_flight)
        for stream in (impressions, shadow_log):
            stream.start()
        drain = Drain()
        drain.install(settings.shutdown_drain_seconds)
        limit = WriteLimit(settings.write_rate, settings.write_burst, metrics)
        app.state.services = Services(
            settings, models, store, metrics, impressions, shadow, tracer, drain, api_keys, limit
        )
        log.info("serving model %s from %s", models.runner.version, settings.models)
        # Everything built so far lives as long as the process; moved out of the collector's
        # reach, it no longer makes each full collection a long pause of the event loop.
        gc.freeze()
        try:
            yield
        finally:
            # uvicorn has stopped accepting and the requests in flight have finished.
            drain.draining = True
            await shadow.stop()  # before the models: a re-scoring in flight holds the canary
            await models.stop()
            for stream in (impressions, shadow_log):
                await stream.stop()
            for c in (client, writer, log_client):
                await close(c)
            log.info("redis connections closed")
            executor.shutdown(wait=True)
            log.info("onnxruntime threads stopped; shutdown complete")
            drain.uninstall()
            metrics.process_exited()
            if tracer_provider is None:  # the app's own: export what is buffered
                shutdown(provider)

    app = FastAPIOffline(
        title="DIN CTR scoring",
        version="0.1.0",
        description="Ranks candidate ads for a user with a Deep Interest Network, using the user's "
        "recent behaviours from Redis.",
        lifespan=lifespan,
    )
    metrics = Metrics()
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(  # runs before the body limit: an overload is refused before anything else
        AdmissionControl,
        paths={"/score"},
        max_in_flight=settings.max_in_flight,
        max_queue_ms=settings.max_queue_ms,
        deadline_ms=settings.deadline_ms,
        metrics=metrics,
    )
    install_error_handlers(app, metrics.count_error)
    app.openapi = model_openapi(app, settings)  # type: ignore[method-assign]
    routers = (score.router, events.router, ops.router, admin.router, ui.router)
    for router in routers:
        app.include_router(router)
    paths = {getattr(r, "path", "") for r in (*app.routes, *(r for router in routers for r in router.routes))}
    # Outside admission control and the body limit: a caller without a key costs nothing more.
    app.add_middleware(
        Authentication, ring=api_keys, metrics=metrics, allow_unauthenticated=settings.allow_unauthenticated
    )
    # Added last, so it runs first: it sees every answer, refusals included.
    app.add_middleware(ResponseCounter, routes=paths - {""}, metrics=metrics)
    tracer = instrument(app, provider)  # outermost: the request span covers all the rest
    return app
