"""The loaded model, run: feeds in, CTRs (and attention) out, in one onnxruntime call.

Load once, run a batch of candidates in one call, off the event loop (onnxruntime releases the
GIL), on a bounded pool so concurrent requests cannot oversubscribe the cores. What a request's
values may be and how they become feeds is ``service.features`` (``runner.features``, built with
the runner, so a request is checked, encoded and scored by one version).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from opentelemetry.trace import Tracer

from contracts.bundle import Bundle
from contracts.feeds import Feeds
from service.batcher import MicroBatcher, RunFn
from service.deadline import Deadline
from service.features import Features
from service.settings import Settings
from service.tracing import record


class ModelRunner:
    """One loaded model. Never changes once built: a hot swap builds a new ModelRunner, and a request
    keeps the one it started with, so it is scored, ranked and labelled by a single version."""

    def __init__(self, bundle: Bundle, executor: ThreadPoolExecutor, settings: Settings):
        self.bundle, self.executor = bundle, executor
        self.features = Features(bundle.space)
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
        feeds: Feeds,
        explain: bool,
        deadline: Deadline | None = None,
        tracer: Tracer | None = None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """CTR per candidate, and attention [N, L] if asked. With a deadline, a run that would start
        after it is not started (DeadlineExceeded). With a tracer (service.scoring passes one only
        for a request being traced), the wait for a thread and the run are spans."""
        b = self.bundle
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
