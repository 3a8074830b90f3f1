"""POST /score end to end: validate against the model's schema, read the user, score, rank."""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import numpy as np
from opentelemetry.trace import Tracer, get_current_span

from service.deadline import Deadline
from service.errors import InvalidInput
from service.explore import explore
from service.impressions import ImpressionLog
from service.metrics import Metrics
from service.runner import ModelRunner, check_column, check_known, default_context, encode_column
from service.schemas import ScoreRequest
from service.settings import Settings
from service.shadow import ShadowScorer
from service.store import BehaviorStore


def candidate_rows(
    req: ScoreRequest, runner: ModelRunner, settings: Settings
) -> tuple[list[dict[str, Any]], np.ndarray, list[str]]:
    """The candidates and their index rows [N, F], checked and encoded in one pass over each of the
    model's ad fields (a few hundred candidates are a hot path), before anything is read; exact
    duplicates are scored and returned once. Also the profile and context keys sent that this
    model does not take (``user.<key>``, ``context.<key>``): ignored, and said in the answer."""
    space, candidates = runner.bundle.space, req.candidates
    if len(candidates) > settings.max_candidates:
        raise InvalidInput(
            f"at most {settings.max_candidates} candidates per request, got {len(candidates)}",
            ("body", "candidates"),
        )
    columns = [[c.get(name) for c in candidates] for name in space.schema.behavior]
    for name, column in zip(space.schema.behavior, columns, strict=True):
        check_column(space, name, column, ("body", "candidates"))
    ignored = []
    if req.context is not None:
        ignored += [
            f"context.{k}" for k in check_known(space, req.context, space.schema.context, ("body", "context"))
        ]
    if req.user is not None:
        ignored += [f"user.{k}" for k in check_known(space, req.user, space.schema.profile, ("body", "user"))]
    encoded = np.stack(
        [encode_column(space, n, c) for n, c in zip(space.schema.behavior, columns, strict=True)], 1
    )
    first: dict[tuple[Any, ...], int] = {}
    for i, key in enumerate(zip(*columns, strict=True)):
        first.setdefault(key, i)
    if len(first) == len(candidates):
        return candidates, encoded, ignored
    keep = list(first.values())
    return [candidates[i] for i in keep], encoded[keep], ignored


async def score(
    req: ScoreRequest,
    request_id: str,
    runner: ModelRunner,
    store: BehaviorStore,
    metrics: Metrics,
    settings: Settings,
    impressions: ImpressionLog | None = None,
    deadline: Deadline | None = None,
    shadow: tuple[ModelRunner, ShadowScorer] | None = None,
    tracer: Tracer | None = None,
) -> dict[str, Any]:
    """The response body (the ScoreResponse schema), built as plain data: per-item pydantic models
    cost more than the model run at a few hundred candidates. The items returned are logged as
    impressions, with the features exactly as scored; with a shadow canary, it scores them again
    once the answer has gone."""
    t0 = time.perf_counter()
    span = get_current_span()  # the request's: recording only when tracing is on and samples it
    if not span.is_recording():
        tracer = None
    with tracer.start_as_current_span("din.encode_candidates") if tracer else nullcontext():
        rows, encoded, ignored = candidate_rows(req, runner, settings)
    schema = runner.bundle.space.schema
    if deadline is not None:
        deadline.check("reading the user")
    t_read = time.perf_counter()
    with tracer.start_as_current_span("din.read_user") if tracer else nullcontext():
        state = await store.read(
            req.user_id,
            limit=runner.bundle.max_history,
            with_profile=req.user is None and bool(schema.profile),
        )
    t_redis = time.perf_counter()
    metrics.stage_seconds.labels(stage="redis").observe(t_redis - t_read)
    if state is None:
        metrics.degraded.inc()
    history = state.history if state else []
    profile = req.user if req.user is not None else (state.profile if state else {})
    context = {**default_context(), **(req.context or {})}
    body: dict[str, Any] = {
        "request_id": request_id,
        "model_version": runner.version,
        "user_id": req.user_id,
        "degraded": state is None,
    }
    if ignored:
        body["ignored"] = ignored
    metrics.scored.labels(version=runner.version).inc()
    if tracer:
        span.set_attributes({"din.model_version": runner.version, "din.candidates": len(rows),
                             "din.history_length": len(history), "din.degraded": state is None,
                             "din.request_id": request_id})  # fmt: skip
    if req.explain:
        body["history"] = history  # what "attention" and "influence" are aligned with, oldest first
    if not rows:
        return body | {"history_length": len(history), "items": []}
    ctr, attention = await runner.run(history, profile, context, encoded, req.explain, deadline, tracer)
    t_model = time.perf_counter()
    metrics.stage_seconds.labels(stage="model").observe(t_model - t_redis)
    metrics.candidates.observe(len(rows))

    order = np.argsort(-ctr, kind="stable")[: req.top_k or len(rows)]
    propensity = explored = None
    if settings.explore_share > 0 and len(order) < len(rows):
        order, propensity, explored = explore(order, len(rows), settings.explore_share)
    # float64, so the logged CTR is the answer's to the last digit
    served, served_ctr = order.tolist(), ctr[order].astype(np.float64)
    ranked = zip(served, served_ctr.tolist(), strict=True)
    items = [{**rows[i], "ctr": p, "rank": rank} for rank, (i, p) in enumerate(ranked, start=1)]
    if explored is not None:
        for item, was_explored in zip(items, explored.tolist(), strict=True):
            if was_explored:
                item["explored"] = True
    if attention is not None:
        influence = await runner.influence(history, profile, context, encoded[order], ctr[order])
        n = len(history)
        for item, i, lift in zip(items, order, influence, strict=True):
            weights = attention[i, :n].astype(np.float64)
            item["behaviors"] = _top_behaviors(history, weights, lift, settings.explain_top)
            item["attention"], item["influence"] = weights.tolist(), lift.tolist()
    metrics.served.labels(version=runner.version).inc(len(items))
    if shadow is not None:
        answer = {"request_id": request_id, "user_id": req.user_id, "model_version": runner.version,
                  "history": history, "profile": profile, "context": context, "ctr": served_ctr}  # fmt: skip
        shadow[1].submit(shadow[0], answer, [rows[i] for i in served])
    if impressions is not None and impressions.wants():
        record = {
            "request_id": request_id,
            "ts": time.time(),
            "user_id": req.user_id,
            "model_version": runner.version,
            "degraded": state is None,
            "fields": schema.behavior,
            "history": history,
            "profile": {k: profile.get(k) for k in schema.profile},
            "context": {k: context.get(k) for k in schema.context},
            "candidates": [rows[i] for i in served],
            "ctr": served_ctr,  # a numpy array: encoded by the log's background task, off this path
        }
        if propensity is not None and explored is not None:
            record |= {"propensity": propensity, "explored": explored}
        impressions.log(record)
    metrics.stage_seconds.labels(stage="total").observe(time.perf_counter() - t0)
    return body | {"history_length": len(history), "items": items}


def _top_behaviors(
    history: list[dict[str, Any]], weights: np.ndarray, influence: np.ndarray, k: int
) -> list[dict[str, Any]]:
    """The k behaviours that moved the item's CTR most, either way: ordered by the size of their
    influence (the CTR with the whole history minus the CTR without that behaviour), each with its
    signed influence and its raw attention weight. The raw weight alone does not say which way a
    behaviour pushes: the activation unit's output is not normalised and may be negative, and what
    the MLP after it makes of the weighted sum is not monotone in it."""
    top = np.argsort(-np.abs(influence), kind="stable")[:k]
    return [{**history[j], "weight": float(weights[j]), "influence": float(influence[j])} for j in top]
