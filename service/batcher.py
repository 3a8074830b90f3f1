"""Dynamic micro-batching: requests that arrive together share one onnxruntime run (R > 1).

Like Triton's dynamic batcher: the first waiting request opens a batch, which closes after
``max_wait_ms`` or once it holds ``max_requests`` requests or ``max_candidates`` candidates. The
serving graph takes each request's history once, so batching costs no tiling. A batch that fails
is retried request by request, so one bad request gets its own error and the others their scores.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from contracts.feeds import Feeds, concat, split

RunFn = Callable[[Feeds, bool], list[np.ndarray]]


@dataclass
class _Pending:
    feeds: Feeds  # R = 1 feeds of one request
    explain: bool
    future: asyncio.Future[list[np.ndarray]] = field(repr=False)


class MicroBatcher:
    def __init__(
        self,
        run: RunFn,
        executor_submit: Callable[[RunFn, Feeds, bool], asyncio.Future[list[np.ndarray]]],
        max_wait_ms: float,
        max_requests: int,
        max_candidates: int,
        concurrency: int,
    ):
        self.run, self.submit = run, executor_submit
        self.max_wait = max_wait_ms / 1000
        self.max_requests, self.max_candidates = max_requests, max_candidates
        self.queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self.slots = asyncio.Semaphore(concurrency)
        self.task: asyncio.Task[None] | None = None
        self.running: set[asyncio.Task[None]] = set()
        self.batches = 0  # runs made, for metrics and tests
        self.stopped = False
        self.open: list[_Pending] = []  # the batch being filled

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name="micro-batcher")

    async def stop(self) -> None:
        """Stops batching without dropping anyone: runs already started finish, requests still
        queued run alone, and later callers (holding a model that was just swapped out) run alone."""
        self.stopped = True
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
        pending, self.open = self.open, []
        while not self.queue.empty():
            pending.append(self.queue.get_nowait())
        for p in pending:
            await self._run_alone(p)
        if self.running:
            await asyncio.gather(*self.running, return_exceptions=True)

    async def score(self, feeds: Feeds, explain: bool) -> list[np.ndarray]:
        if self.stopped:
            return await self.submit(self.run, feeds, explain)
        future: asyncio.Future[list[np.ndarray]] = asyncio.get_running_loop().create_future()
        await self.queue.put(_Pending(feeds, explain, future))
        return await future

    async def _loop(self) -> None:
        while True:
            self.open = batch = [await self.queue.get()]  # visible to stop() while it fills
            n = len(batch[0].feeds.candidate)
            deadline = asyncio.get_running_loop().time() + self.max_wait
            while len(batch) < self.max_requests and n < self.max_candidates:
                timeout = deadline - asyncio.get_running_loop().time()
                if timeout <= 0:
                    break
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow the cancel of
                # stop() when it lands as the timeout fires, and the loop would never end.
                try:
                    async with asyncio.timeout(timeout):
                        item = await self.queue.get()
                except TimeoutError:
                    break
                batch.append(item)
                n += len(item.feeds.candidate)
            await self.slots.acquire()  # at most `concurrency` runs in flight
            task = asyncio.create_task(self._run(batch))
            self.open = []
            self.running.add(task)  # a reference, so the task is not garbage-collected mid-run
            task.add_done_callback(self.running.discard)

    async def _run(self, batch: list[_Pending]) -> None:
        try:
            explain = any(p.explain for p in batch)
            feeds = [p.feeds for p in batch]
            try:
                outputs = await self.submit(self.run, concat(feeds) if len(feeds) > 1 else feeds[0], explain)
                self.batches += 1
                for p, out in zip(batch, split(outputs, feeds), strict=True):
                    if not p.future.done():
                        p.future.set_result(out)
            except Exception:
                if len(batch) == 1:
                    raise
                for p in batch:  # isolate the failing request: each gets its own answer or error
                    await self._run_alone(p)
        except Exception as e:
            for p in batch:
                if not p.future.done():
                    p.future.set_exception(e)
        finally:
            self.slots.release()

    async def _run_alone(self, p: _Pending) -> None:
        try:
            p.future.set_result(await self.submit(self.run, p.feeds, p.explain))
        except Exception as e:
            p.future.set_exception(e)
