"""What ``lifespan`` builds, as one typed object the routes read (``app.state.services``).

Built once per worker; a route reads the model serving now through ``models`` at the start of its
request and keeps it to the end (a hot swap never changes a request in flight).
"""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request
from opentelemetry.trace import Tracer

from service.auth import KeyRing, WriteLimit
from service.impressions import ImpressionLog
from service.metrics import Metrics
from service.model_slot import ModelSlot
from service.settings import Settings
from service.shadow import ShadowScorer
from service.shutdown import Drain
from service.store import BehaviorStore


@dataclass(frozen=True)
class Services:
    settings: Settings
    models: ModelSlot  # the serving version, its canary, reloads
    store: BehaviorStore  # users' histories and profiles in Redis
    metrics: Metrics
    impressions: ImpressionLog  # the served answers, for the feedback loop
    shadow: ShadowScorer  # a shadow canary's re-scoring of answers
    tracer: Tracer  # a no-op tracer unless tracing is on
    drain: Drain  # set while shutting down
    keys: KeyRing  # the API keys' entries (none: no keys needed, loopback only)
    write_limit: WriteLimit  # each key's rate of writes


def services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services
