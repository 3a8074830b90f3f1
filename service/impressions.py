"""The impression log: what /score served, with the features exactly as scored, written to a Redis
Stream off the request path.

On the request path ``ImpressionLog.log`` only appends a reference to the answer's parts to a
bounded buffer (no copy, no encoding); a background task encodes and flushes the buffer in
pipelined batches. A full buffer or a sink that fails drops records and counts the impressions
(``din_impressions_dropped_total{reason}``): logging never fails or slows an answer. The record
format lives in ``service.keys`` (``encode_feedback``), so a Kafka sink could replace the stream
without touching the exporter's reading of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from typing import Any

from prometheus_client import Counter
from redis.exceptions import RedisError

from service.keys import encode_feedback
from service.redis_client import AsyncClient
from service.settings import Settings

log = logging.getLogger(__name__)

FLUSH_BATCH = 256  # answers per pipelined write


class ImpressionLog:
    """One stream of answers: the impressions served, or a shadow canary's scores of them. ``logged``
    and ``dropped`` (by ``reason``) count the items of the records."""

    def __init__(
        self,
        client: AsyncClient,
        streams: Sequence[str],
        settings: Settings,
        logged: Counter,
        dropped: Counter,
    ):
        """``streams``: the stream's keys (``service.keys``); records go to them in turn, so on a
        cluster every shard, and every master, takes a share."""
        self.client, self.streams, self.logged, self.dropped = client, streams, logged, dropped
        self.key = streams[0].rpartition(":")[0] if len(streams) > 1 else streams[0]  # for log lines
        self._turn = 0
        self.enabled = settings.log_impressions and settings.impression_sample_rate > 0
        self.rate = settings.impression_sample_rate
        self.capacity = settings.impression_buffer
        self.maxlen = max(1, settings.impression_stream_maxlen // len(streams))  # per shard
        self.interval = settings.impression_flush_ms / 1000
        self.buffer: deque[dict[str, Any]] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._last_warning = 0.0

    def wants(self) -> bool:
        """Whether to log this answer (on, and sampled): asked before the record is built, so an
        answer that is not logged costs nothing more."""
        return self.enabled and (self.rate >= 1 or random.random() < self.rate)

    def log(self, record: dict[str, Any]) -> None:
        """One /score answer that ``wants`` chose (its ``candidates`` are the impressions). Never
        blocks, never raises."""
        if len(self.buffer) >= self.capacity:
            self.dropped.labels(reason="buffer_full").inc(len(record["candidates"]))
            return
        self.buffer.append(record)
        if len(self.buffer) >= FLUSH_BATCH:
            self._wake.set()

    def start(self) -> None:
        if self.enabled:
            self._task = asyncio.create_task(self._run(), name="impression-log")

    async def stop(self) -> None:
        """Flushes what is buffered (each batch bounded by the client's timeout), then stops.
        Asked, not cancelled: on Python 3.11, asyncio.wait_for can swallow a cancellation that
        arrives as its timeout fires, and the task would never end."""
        if self._task is None:
            return
        self._stopping = True
        self._wake.set()
        await self._task
        while self.buffer:
            await self.flush()

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            while self.buffer and not self._stopping:
                try:
                    await self.flush()
                except Exception:  # a record that cannot be encoded must not end the log
                    log.exception("%s: flush failed", self.key)
                if len(self.buffer) < FLUSH_BATCH:
                    break

    async def flush(self) -> None:
        batch = [self.buffer.popleft() for _ in range(min(FLUSH_BATCH, len(self.buffer)))]
        if not batch:
            return
        items = sum(len(r["candidates"]) for r in batch)
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                for record in batch:
                    self._turn = (self._turn + 1) % len(self.streams)
                    stream = self.streams[self._turn]
                    pipe.xadd(stream, {"r": encode_feedback(record)}, maxlen=self.maxlen, approximate=True)
                await pipe.execute()
        except (RedisError, OSError) as e:
            self.dropped.labels(reason="sink_error").inc(items)
            now = time.monotonic()
            if now - self._last_warning > 10:  # one line per outage, not one per batch
                self._last_warning = now
                log.warning("%s: %d items dropped, the sink failed: %s", self.key, items, e)
            return
        self.logged.inc(items)
