"""Assembles the app. Run with: uvicorn --factory service.main:create_app --port 8000"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import redis.asyncio as aioredis
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.errors import install_error_handlers
from service.keys import Keys
from service.limits import BodySizeLimit
from service.metrics import Metrics
from service.models import ModelSlot
from service.routes import admin, ops, scoring
from service.settings import Settings
from service.store import BehaviorStore

log = logging.getLogger("service")


def redis_client(settings: Settings) -> aioredis.Redis:
    timeout = settings.redis_timeout_ms / 1000
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=64,
        timeout=timeout,  # waiting for a free connection counts against the same budget
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
    )
    # No retries on the scoring path: a slow Redis must cost a request one timeout, not several.
    return aioredis.Redis(connection_pool=pool, retry=Retry(NoBackoff(), 0))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()  # fails fast on a bad environment, before serving anything

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        executor = ThreadPoolExecutor(settings.inference_threads, thread_name_prefix="onnx")
        metrics = Metrics()
        models = ModelSlot(settings, executor, metrics)
        await models.start()
        client = redis_client(settings)
        app.state.settings, app.state.metrics, app.state.models = settings, metrics, models
        app.state.store = BehaviorStore(
            client,
            Keys(settings.key_prefix),
            settings.history_cap,
            settings.history_ttl_seconds,
            settings.redis_backoff_seconds,
        )
        log.info("serving model %s from %s", models.scorer.version, settings.models)
        try:
            yield
        finally:
            await models.stop()
            await client.aclose()
            await client.connection_pool.disconnect()
            executor.shutdown(wait=True)

    app = FastAPIOffline(
        title="DIN CTR scoring",
        version="0.1.0",
        description="Ranks candidate ads for a user with a Deep Interest Network, using the user's "
        "recent behaviours from Redis.",
        lifespan=lifespan,
    )
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    install_error_handlers(app)
    app.include_router(scoring.router)
    app.include_router(ops.router)
    app.include_router(admin.router)
    return app
