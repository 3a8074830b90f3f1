"""The impression log: what /score served, with the features exactly as scored, written to a Redis
Stream off the request path.

On the request path ``ImpressionLog.log`` only queues a reference to the answer's parts. A loop
callback encodes what is queued once the answer has been written, so the buffer holds bytes: the
answers' objects are freed at once (kept alive until a flush, they made the cyclic collector run
on about every other request) and no flush has to encode a whole batch in one stall. A background task writes
the buffer with one script call per shard and chunk, each entry one XADD: redis-py's pipeline costs
several times the encoding per command. A full buffer or a sink that fails drops records and
counts the impressions (``din_impressions_dropped_total{reason}``): logging never fails or slows an
answer. The record format lives in ``contracts.keys`` (``encode_feedback``), so a Kafka sink could
replace the stream without touching the exporter's reading of it.
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

from contracts.keys import encode_feedback
from contracts.redis_client import AsyncClient
from service.settings import Settings

log = logging.getLogger(__name__)

FLUSH_BATCH = 256  # answers per flush
CALL_BYTES = 1 << 20  # per script call: Redis runs a script to its end, so one call stays short

# ARGV[1] is the stream's MAXLEN (approximate), then one encoded record per entry.
APPEND = """
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'r', ARGV[i])
end
return #ARGV - 1
"""


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
        """``streams``: the stream's keys (``contracts.keys``); records go to them in turn, so on a
        cluster every shard, and every master, takes a share."""
        self.client, self.streams, self.logged, self.dropped = client, streams, logged, dropped
        self.key = streams[0].rpartition(":")[0] if len(streams) > 1 else streams[0]  # for log lines
        self._turn = 0
        self.enabled = settings.log_impressions and settings.impression_sample_rate > 0
        self.rate = settings.impression_sample_rate
        self.capacity = settings.impression_buffer
        self.maxlen = max(1, settings.impression_stream_maxlen // len(streams))  # per shard
        self.interval = settings.impression_flush_ms / 1000
        self.buffer: deque[tuple[bytes, int]] = deque()  # (record, items)
        self._pending: list[dict[str, Any]] = []  # answers not encoded yet
        self._append = client.register_script(APPEND)
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
        if len(self.buffer) + len(self._pending) >= self.capacity:
            self.dropped.labels(reason="buffer_full").inc(len(record["candidates"]))
            return
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._encode)
        self._pending.append(record)

    def _encode(self) -> None:
        pending, self._pending = self._pending, []
        for record in pending:
            try:
                self.buffer.append((encode_feedback(record), len(record["candidates"])))
            except Exception:  # a record that cannot be encoded must not end the log
                self.dropped.labels(reason="encode_error").inc(len(record["candidates"]))
                log.exception("%s: a record could not be encoded", self.key)
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
        self._encode()
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
        """Writes up to FLUSH_BATCH buffered records, dealt to the shards in turn, one script call
        per shard and chunk. The calls run one after another: redis-py's asyncio cluster client
        (8.1) fails most of a batch of concurrent script calls with lost connections."""
        batch = [self.buffer.popleft() for _ in range(min(FLUSH_BATCH, len(self.buffer)))]
        if not batch:
            return
        shards: dict[str, list[tuple[bytes, int]]] = {}
        for entry in batch:
            self._turn = (self._turn + 1) % len(self.streams)
            shards.setdefault(self.streams[self._turn], []).append(entry)
        for stream, entries in shards.items():
            for chunk in _chunks(entries):
                await self._write(stream, chunk)

    async def _write(self, stream: str, entries: list[tuple[bytes, int]]) -> None:
        items = sum(n for _, n in entries)
        try:  # a script that fails part-way (Redis out of memory) counts its whole chunk as dropped
            await self._append(keys=[stream], args=[self.maxlen, *(raw for raw, _ in entries)])
        except Exception as e:  # RedisError, OSError, or the client's own breakage: never lost uncounted
            self.dropped.labels(reason="sink_error").inc(items)
            now = time.monotonic()
            if now - self._last_warning > 10:  # one line per outage, not one per batch
                self._last_warning = now
                log.warning("%s: %d items dropped, the sink failed: %s", self.key, items, e)
            return
        self.logged.inc(items)


def _chunks(entries: list[tuple[bytes, int]]) -> list[list[tuple[bytes, int]]]:
    """Consecutive runs of entries of at most CALL_BYTES each (a larger record goes alone)."""
    out: list[list[tuple[bytes, int]]] = [[]]
    size = 0
    for entry in entries:
        if out[-1] and size + len(entry[0]) > CALL_BYTES:
            out.append([])
            size = 0
        out[-1].append(entry)
        size += len(entry[0])
    return out
