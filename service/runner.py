"""Scoring: user state + request -> one onnxruntime run -> ranked items.

Load once, run a batch of candidates in one call, off the event loop (onnxruntime releases the
GIL), on a bounded pool so concurrent requests cannot oversubscribe the cores.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from model.bundle import Bundle
from model.feeds import Feeds
from service.batcher import MicroBatcher, RunFn
from service.deadline import Deadline
from service.features import build_feeds
from service.settings import Settings


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
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """CTR per candidate, and attention [N, L] if asked. ``history`` is at most max_history long.
        With a deadline, a run that would start after it is not started (DeadlineExceeded)."""
        b = self.bundle
        feeds = build_feeds(b.space, history, profile, context, candidates)
        if deadline is not None:
            deadline.check("scoring")
        if self.batcher is not None:
            outputs = await self.batcher.score(feeds, explain)
        elif deadline is not None:

            def run_in_time(feeds: Feeds, explain: bool) -> list[np.ndarray]:
                deadline.check("scoring")  # it may have waited in the executor's queue
                return b.run(feeds, explain)

            outputs = await self.submit(run_in_time, feeds, explain)
        else:
            outputs = await self.submit(b.run, feeds, explain)
        return outputs[0], (outputs[1] if explain else None)
