"""The loaded model: raw request and Redis values checked and encoded for its schema, then one
onnxruntime run.

Types are checked against each vocabulary (an integer feature takes integers, a string feature
strings) and errors name the field. Unknown ids are fine: they map to the OOV index. The id ->
index lookup is a vectorised ``searchsorted`` per feature (``model.schema.Vocab.encode``).

Load once, run a batch of candidates in one call, off the event loop (onnxruntime releases the
GIL), on a bounded pool so concurrent requests cannot oversubscribe the cores.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from typing import Any

import numpy as np
from opentelemetry.trace import Tracer

from model.bundle import Bundle
from model.feeds import Feeds, Inputs, one_request
from model.schema import CONTEXT_RANGES, MISSING_INT, MISSING_STR, PAD, FeatureSpace
from service.batcher import MicroBatcher, RunFn
from service.deadline import Deadline
from service.errors import InvalidInput
from service.ids import INT_MAX, INT_MIN
from service.settings import Settings
from service.tracing import record


def check_fields(
    space: FeatureSpace,
    values: Mapping[str, Any],
    names: Sequence[str],
    loc: tuple[str | int, ...],
    required: bool,
) -> None:
    for name in names:
        if name not in values:
            if required:
                raise InvalidInput(f"missing feature {name!r}", (*loc, name))
            continue
        _check_type(space, name, values[name], (*loc, name))


def check_column(space: FeatureSpace, name: str, column: Sequence[Any], loc: tuple[str | int, ...]) -> None:
    """One required feature over many rows (``column[i]`` is row i's value, None if absent)."""
    want = str if space.vocabs[name].is_string else int
    if all(type(v) is want for v in column):
        return
    i = next(i for i, v in enumerate(column) if type(v) is not want)
    if column[i] is None:
        raise InvalidInput(f"missing feature {name!r}", (*loc, i, name))
    _check_type(space, name, column[i], (*loc, i, name))


def check_known(
    space: FeatureSpace, values: Mapping[str, Any], names: Sequence[str], loc: tuple[str | int, ...]
) -> list[str]:
    """Checks the keys that are among ``names`` (this model's profile or context features); returns
    the others. They are not an error: a client written for another version of the model keeps
    working when the model behind the endpoint changes, and learns what this one left out."""
    ignored = []
    for key, value in values.items():
        if key not in names:
            ignored.append(key)
            continue
        _check_type(space, key, value, (*loc, key))
        bounds = CONTEXT_RANGES.get(key) if key in space.schema.context else None
        if bounds is not None and isinstance(value, int) and not bounds[0] <= value <= bounds[1]:
            raise InvalidInput(f"{key} must be from {bounds[0]} to {bounds[1]}", (*loc, key))
    return ignored


def _check_type(space: FeatureSpace, name: str, value: Any, loc: tuple[str | int, ...]) -> None:
    want_str = space.vocabs[name].is_string
    ok = isinstance(value, str) if want_str else isinstance(value, int) and not isinstance(value, bool)
    if not ok:
        got = "a string" if isinstance(value, str) else "an integer"
        raise InvalidInput(
            f"{name} must be {'a string' if want_str else 'an integer'} for this model, not {got}", loc
        )


def encode_column(space: FeatureSpace, name: str, values: Sequence[Any]) -> np.ndarray:
    """Indices of one feature's values; a value of the wrong type or beyond 64 bits (one stored
    before the id rule existed) counts as missing, which maps to OOV."""
    vocab = space.vocabs[name]
    if vocab.is_string:
        raw = np.array([v if isinstance(v, str) else MISSING_STR for v in values], dtype=str)
    else:
        ints = [v if isinstance(v, int) else MISSING_INT for v in values]
        try:
            raw = np.array(ints, dtype=np.int64)
        except OverflowError:
            raw = np.array([v if INT_MIN <= v <= INT_MAX else MISSING_INT for v in ints], dtype=np.int64)
    return vocab.encode(raw)


def encode_rows(space: FeatureSpace, rows: Sequence[Mapping[str, Any]], names: Sequence[str]) -> np.ndarray:
    """[len(rows), len(names)] indices."""
    if not names:
        return np.zeros((len(rows), 0), dtype=np.int64)
    return np.stack([encode_column(space, n, [r.get(n) for r in rows]) for n in names], axis=1)


def default_context(now: float | None = None) -> dict[str, int]:
    """Context derived from the request time (UTC), for models that use hour and weekday."""
    t = time.gmtime(now if now is not None else time.time())
    return {"hour": t.tm_hour, "weekday": t.tm_wday}


def build_feeds(
    space: FeatureSpace,
    history: Sequence[Mapping[str, Any]],
    profile: Mapping[str, Any],
    context: Mapping[str, Any],
    candidates: np.ndarray,
) -> Feeds:
    """Feeds for one request (R = 1); ``candidates`` are already index rows [N, F] (encoded when
    they were checked). The caller keeps the history within the model's max_history (the store
    reads no more)."""
    s = space.schema
    return one_request(
        encode_rows(space, [profile], s.profile)[0],
        encode_rows(space, [context], s.context)[0],
        encode_rows(space, history, s.behavior),
        candidates,
    )


def leave_one_out(feeds: Feeds, items: np.ndarray) -> Feeds:
    """R = L requests from one request's feeds: request j is the history without behaviour j, each
    scoring ``items`` (index rows [n, F]). Their CTRs against the full history's give each
    behaviour's influence on each item."""
    length = int(feeds.history_len[0])
    history = feeds.history[0, :length]
    without = np.stack([np.delete(history, j, axis=0) for j in range(length)])  # [L, L - 1, F]
    if length == 1:  # the graph's L is never 0: one padding slot, length 0
        without = np.full((1, 1, history.shape[1]), PAD, dtype=np.int64)
    n = len(items)
    return Inputs(
        np.repeat(feeds.profile, length, axis=0),
        np.repeat(feeds.context, length, axis=0),
        without,
        np.full(length, length - 1, dtype=np.int64),
        np.tile(items, (length, 1)),
        np.repeat(np.arange(length, dtype=np.int64), n),
    )


class ModelRunner:
    """One loaded model. Never changes once built: a hot swap builds a new ModelRunner, and a request
    keeps the one it started with, so it is scored, ranked and labelled by a single version."""

    def __init__(self, bundle: Bundle, executor: ThreadPoolExecutor, settings: Settings):
        self.bundle, self.executor = bundle, executor
        self.batcher: MicroBatcher | None = None
        if settings.microbatch_wait_ms > 0:
            self.batcher = MicroBatcher(
                bundle.run,
                self.submit,
                settings.microbatch_wait_ms,
                settings.microbatch_max_requests,
                settings.max_candidates,
                concurrency=settings.inference_threads,
            )

    def start(self) -> None:
        if self.batcher is not None:
            self.batcher.start()

    async def stop(self) -> None:
        if self.batcher is not None:
            await self.batcher.stop()

    def submit(self, fn: RunFn, feeds: Feeds, explain: bool) -> asyncio.Future[list[np.ndarray]]:
        return asyncio.get_running_loop().run_in_executor(self.executor, fn, feeds, explain)

    @property
    def version(self) -> str:
        return self.bundle.version

    async def run(
        self,
        history: list[dict[str, Any]],
        profile: dict[str, Any],
        context: dict[str, Any],
        candidates: np.ndarray,
        explain: bool,
        deadline: Deadline | None = None,
        tracer: Tracer | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """CTR per candidate, and attention [N, L] if asked. ``history`` is at most max_history long.
        With a deadline, a run that would start after it is not started (DeadlineExceeded). With a
        tracer (service.ranking passes one only for a request being traced), the features, the wait
        for a thread and the run are spans."""
        b = self.bundle
        with tracer.start_as_current_span("din.build_features") if tracer else nullcontext():
            feeds = build_feeds(b.space, history, profile, context, candidates)
        if deadline is not None:
            deadline.check("scoring")
        if self.batcher is not None:
            started = time.time_ns()
            outputs = await self.batcher.score(feeds, explain)
            if tracer:
                record(tracer, "din.model_run", started, time.time_ns(), {"din.batched": True})
            return outputs[0], (outputs[1] if explain else None)
        times: list[int] = []

        def run(feeds: Feeds, explain: bool) -> list[np.ndarray]:
            if tracer:
                times.append(time.time_ns())
            if deadline is not None:
                deadline.check("scoring")  # it may have waited in the executor's queue
            try:
                return b.run(feeds, explain)
            finally:
                if tracer:
                    times.append(time.time_ns())

        submitted = time.time_ns()
        outputs = await self.submit(run if tracer or deadline is not None else b.run, feeds, explain)
        if tracer:
            record(tracer, "din.queue_wait", submitted, times[0])
            record(tracer, "din.model_run", times[0], times[1], {"din.batched": False})
        return outputs[0], (outputs[1] if explain else None)

    async def influence(
        self,
        history: list[dict[str, Any]],
        profile: dict[str, Any],
        context: dict[str, Any],
        items: np.ndarray,
        ctr: np.ndarray,
    ) -> np.ndarray:
        """[n, L]: how much each behaviour raised (> 0) or lowered (< 0) each item's CTR, against
        the history without it. ``items`` are index rows [n, F] whose CTR with the full history is
        ``ctr``. One model run of n x L rows, off the event loop."""
        if not history:
            return np.zeros((len(items), 0), dtype=np.float64)
        feeds = leave_one_out(build_feeds(self.bundle.space, history, profile, context, items), items)
        (without,) = await self.submit(self.bundle.run, feeds, False)
        return ctr[:, None].astype(np.float64) - without.reshape(len(history), len(items)).T
