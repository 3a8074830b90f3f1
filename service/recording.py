"""POST /events and POST /profile: checked against the serving model's features
(``service.features``), then written atomically."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from contracts.ids import RawId
from service.errors import InvalidInput
from service.payloads import EventsRequest, EventsResponse, ProfileRequest, extra_fields
from service.services import Services


async def append_events(req: EventsRequest, services: Services, key_id: str) -> EventsResponse:
    settings, models, store, metrics = services.settings, services.models, services.store, services.metrics
    if len(req.events) > settings.max_events:
        raise InvalidInput(
            f"at most {settings.max_events} events per request, got {len(req.events)}", ("body", "events")
        )
    services.write_limit.take(key_id, len(req.events), ("body", "events"))
    features = models.runner.features
    at = time.time()
    now = int(at)
    by_user: dict[RawId, list[dict[str, Any]]] = defaultdict(list)
    clicks = []
    for i, e in enumerate(req.events):
        record = {"item_id": e.item_id, **extra_fields(e)}
        features.check_present(record, features.schema.behavior, ("body", "events", i), required=True)
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


async def upsert_profile(req: ProfileRequest, services: Services, key_id: str) -> None:
    """The features this model takes are checked against it; the others are stored as they are,
    like the extra fields of an event: the store holds raw ids for whichever version reads them."""
    features = services.models.runner.features
    features.check_known(req.profile, features.schema.profile, ("body", "profile"))
    services.write_limit.take(key_id, 1, ("body",))
    await services.store.upsert_profile(req.user_id, req.profile)
