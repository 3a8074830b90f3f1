"""POST /events and POST /profile: validate against the model's schema, then write atomically."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from service.errors import InvalidInput
from service.ids import RawId
from service.metrics import Metrics
from service.model_slot import ModelSlot
from service.runner import ModelRunner, check_fields, check_known
from service.schemas import EventsRequest, EventsResponse, ProfileRequest, extra_fields
from service.settings import Settings
from service.store import BehaviorStore


async def append_events(
    req: EventsRequest, models: ModelSlot, store: BehaviorStore, metrics: Metrics, settings: Settings
) -> EventsResponse:
    if len(req.events) > settings.max_events:
        raise InvalidInput(
            f"at most {settings.max_events} events per request, got {len(req.events)}", ("body", "events")
        )
    space = models.runner.bundle.space
    at = time.time()
    now = int(at)
    by_user: dict[RawId, list[dict[str, Any]]] = defaultdict(list)
    clicks = []
    for i, e in enumerate(req.events):
        record = {"item_id": e.item_id, **extra_fields(e)}
        check_fields(space, record, space.schema.behavior, ("body", "events", i), required=True)
        record["ts"] = e.ts if e.ts is not None else now
        by_user[e.user_id].append(record)  # request order is kept per user
        clicks.append(
            {
                "user_id": e.user_id,
                "item_id": e.item_id,
                "ts": record["ts"],
                "at": at,
                "request_id": e.request_id,
            }
        )
    # Each event is also a click for the feedback loop, written in the same transaction.
    await store.append(by_user, clicks if settings.log_impressions else ())
    metrics.events.inc(len(req.events))
    for e in req.events:
        if e.request_id is not None:  # a click on a served item: counted for the arm the user is in
            metrics.clicks.labels(version=models.route(e.user_id)[0].version).inc()
    return EventsResponse(appended=len(req.events), users=len(by_user))


async def upsert_profile(req: ProfileRequest, runner: ModelRunner, store: BehaviorStore) -> None:
    """The features this model takes are checked against it; the others are stored as they are,
    like the extra fields of an event: the store holds raw ids for whichever version reads them."""
    space = runner.bundle.space
    check_known(space, req.profile, space.schema.profile, ("body", "profile"))
    await store.upsert_profile(req.user_id, req.profile)
