"""POST /score end to end: validate against the model's schema, read the user, score, rank."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.features import check_fields, check_known, default_context
from service.limits import Deadline
from service.metrics import Metrics
from service.schemas import Candidate, ScoreRequest, extra_fields
from service.scorer import Scorer
from service.settings import Settings
from service.store import BehaviorStore


def candidate_rows(req: ScoreRequest, scorer: Scorer, settings: Settings) -> list[dict[str, Any]]:
    """Validated candidate feature dicts; exact duplicates are scored and returned once."""
    space = scorer.bundle.space
    if len(req.candidates) > settings.max_candidates:
        raise InvalidInput(
            f"at most {settings.max_candidates} candidates per request, got {len(req.candidates)}",
            ("body", "candidates"),
        )
    rows, seen = [], set()
    for i, c in enumerate(req.candidates):
        row = _row(c)
        check_fields(space, row, space.schema.behavior, ("body", "candidates", i), required=True)
        key = tuple(row[f] for f in space.schema.behavior)
        if key not in seen:
            seen.add(key)
            rows.append(row)
    if req.context is not None:
        check_known(space, req.context, space.schema.context, ("body", "context"))
    if req.user is not None:
        check_known(space, req.user, space.schema.profile, ("body", "user"))
    return rows


def _row(c: Candidate) -> dict[str, Any]:
    return {"item_id": c.item_id, **extra_fields(c)}


async def score(
    req: ScoreRequest,
    scorer: Scorer,
    store: BehaviorStore,
    metrics: Metrics,
    settings: Settings,
    deadline: Deadline | None = None,
) -> dict[str, Any]:
    """The response body (the ScoreResponse schema), built as plain data: per-item pydantic models
    cost more than the model run at a few hundred candidates."""
    t0 = time.perf_counter()
    rows = candidate_rows(req, scorer, settings)
    schema = scorer.bundle.space.schema
    if deadline is not None:
        deadline.check("reading the user")
    t_read = time.perf_counter()
    state = await store.read(
        req.user_id, limit=scorer.bundle.max_history, with_profile=req.user is None and bool(schema.profile)
    )
    t_redis = time.perf_counter()
    metrics.stage_seconds.labels(stage="redis").observe(t_redis - t_read)
    if state is None:
        metrics.degraded.inc()
    history = state.history if state else []
    profile = req.user if req.user is not None else (state.profile if state else {})
    context = {**default_context(), **(req.context or {})}
    body = {"model_version": scorer.version, "user_id": req.user_id, "degraded": state is None}
    if not rows:
        return body | {"history_length": len(history), "items": []}
    ctr, attention = await scorer.run(history, profile, context, rows, req.explain, deadline)
    t_model = time.perf_counter()
    metrics.stage_seconds.labels(stage="model").observe(t_model - t_redis)
    metrics.candidates.observe(len(rows))

    order = np.argsort(-ctr, kind="stable")[: req.top_k or len(rows)]
    items = []
    for rank, i in enumerate(order, start=1):
        item = {**rows[i], "ctr": float(ctr[i]), "rank": rank}
        if attention is not None:
            item["behaviors"] = _top_behaviors(history, attention[i], settings.explain_top)
        items.append(item)
    metrics.stage_seconds.labels(stage="total").observe(time.perf_counter() - t0)
    return body | {"history_length": len(history), "items": items}


def _top_behaviors(history: list[dict[str, Any]], weights: np.ndarray, k: int) -> list[dict[str, Any]]:
    n = len(history)
    top = np.argsort(-weights[:n], kind="stable")[:k]
    return [{**history[j], "weight": float(weights[j])} for j in top]
