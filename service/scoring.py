"""POST /score end to end, in one line: the request checked and its candidates encoded for the model
(``service.features``), the user read (``service.store``), the feeds built, one model run
(``service.runner``), the candidates ranked, explained if asked, and the answer logged.

The body is built as plain data: per-item pydantic models cost more than the model run at a few
hundred candidates.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any

import numpy as np
from opentelemetry.trace import Tracer, get_current_span

from contracts.feeds import Feeds
from contracts.ids import RawId
from contracts.schema import current_context
from service.auth import ANONYMOUS
from service.deadline import Deadline
from service.explore import explore
from service.features import leave_one_out
from service.payloads import ScoreRequest
from service.runner import ModelRunner
from service.services import Services


async def score(
    req: ScoreRequest,
    request_id: str,
    services: Services,
    runner: ModelRunner,
    shadow: ModelRunner | None = None,
    deadline: Deadline | None = None,
    key_id: str = ANONYMOUS,
) -> dict[str, Any]:
    """The response body (the ScoreResponse schema). ``runner`` is the version serving this user
    (their experiment arm), ``shadow`` a shadow canary that scores the served items again once the
    answer has gone. The items returned are logged as impressions, with the features as scored."""
    settings, metrics, store = services.settings, services.metrics, services.store
    t0 = time.perf_counter()
    span = get_current_span()  # the request's: recording only when tracing is on and samples it
    tracer: Tracer | None = services.tracer if span.is_recording() else None
    features, schema = runner.features, runner.features.schema
    with tracer.start_as_current_span("din.encode_candidates") if tracer else nullcontext():
        checked = features.request(req, settings.max_candidates)
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
    context = {**current_context(), **(req.context or {})}
    body: dict[str, Any] = {
        "request_id": request_id,
        "model_version": runner.version,
        "user_id": req.user_id,
        "degraded": state is None,
    }
    if checked.ignored:
        body["ignored"] = checked.ignored
    metrics.scored.labels(version=runner.version).inc()
    rows = checked.rows
    if tracer:
        span.set_attributes({"din.model_version": runner.version, "din.candidates": len(rows),
                             "din.history_length": len(history), "din.degraded": state is None,
                             "din.request_id": request_id})  # fmt: skip
    if req.explain:
        body["history"] = history  # what "attention" and "influence" are aligned with, oldest first
    if not rows:
        return body | {"history_length": len(history), "items": []}
    with tracer.start_as_current_span("din.build_features") if tracer else nullcontext():
        feeds = features.feeds(history, profile, context, checked.encoded)
    ctr, attention = await runner.run(feeds, req.explain, deadline, tracer)
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
        await _explain(items, history, feeds, checked.encoded[order], served_ctr, attention[order], runner,
                       settings.explain_top)  # fmt: skip
    metrics.served.labels(version=runner.version).inc(len(items))
    metrics.predicted_clicks.labels(version=runner.version).inc(float(served_ctr.sum()))
    if shadow is not None:
        answer = {"request_id": request_id, "user_id": req.user_id, "model_version": runner.version,
                  "history": history, "profile": profile, "context": context, "ctr": served_ctr}  # fmt: skip
        services.shadow.submit(shadow, answer, [rows[i] for i in served])
    if services.impressions.wants():
        record = {
            "request_id": request_id,
            "ts": time.time(),
            "user_id": req.user_id,
            "model_version": runner.version,
            "key_id": key_id,
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
        services.impressions.log(record)
    metrics.stage_seconds.labels(stage="total").observe(time.perf_counter() - t0)
    return body | {"history_length": len(history), "items": items}


async def _explain(
    items: list[dict[str, Any]],
    history: list[dict[str, RawId]],
    feeds: Feeds,
    served: np.ndarray,
    ctr: np.ndarray,
    attention: np.ndarray,
    runner: ModelRunner,
    explain_top: int,
) -> None:
    """Adds to each served item its raw attention per behaviour, each behaviour's influence (the
    item's CTR with the whole history minus its CTR without that behaviour: one more model run of
    n x L rows, off the event loop) and the behaviours that moved it most."""
    n = len(history)
    if n:
        without, _ = await runner.run(leave_one_out(feeds, served), False)
        influence = ctr[:, None] - without.reshape(n, len(served)).T.astype(np.float64)
    else:
        influence = np.zeros((len(served), 0), dtype=np.float64)
    for item, weights, lift in zip(items, attention[:, :n].astype(np.float64), influence, strict=True):
        item["behaviors"] = _top_behaviors(history, weights, lift, explain_top)
        item["attention"], item["influence"] = weights.tolist(), lift.tolist()


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
