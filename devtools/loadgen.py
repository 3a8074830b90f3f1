"""An open-loop HTTP/1.1 load generator on asyncio streams, for the reliability scenarios.

Requests are sent on a fixed schedule (``rate`` per second) whatever the server does, so an
overloaded server meets the offered load rather than slowing the client down; each latency is
measured from the request's scheduled time, so time spent waiting for a free connection counts
(no coordinated omission). Every answer is kept: time, status, latency and the fields a scenario
needs (``degraded``, ``model_version``).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import orjson
import uvloop

T = TypeVar("T")


def run_load(main: Coroutine[Any, Any, T]) -> T:
    """Runs a load coroutine so that the client's own pauses are not reported as the server's
    latency (it counts from the scheduled send): the standard asyncio loop falls behind at high
    rates where uvloop keeps up, and the client's own full garbage collections (over a process
    that has just trained a model, or over the answers a long run accumulates) stop it for
    hundreds of milliseconds (docs/design.md). So objects that exist before the run are frozen
    out of the collector's reach, and the collector is off while the load runs (a bounded run's
    garbage is freed by reference counting; the cycles wait until the end)."""
    gc.collect()
    gc.freeze()
    gc.disable()
    try:
        return uvloop.run(main)
    finally:
        gc.enable()
        gc.unfreeze()


SHED_KINDS = {"overloaded", "deadline_exceeded"}  # service.errors: Overloaded, DeadlineExceeded


def refusal_kind(body: bytes) -> str:
    """The ``type`` of an error answer's first detail (service.errors' one shape)."""
    try:
        return str(orjson.loads(body)["detail"][0]["type"])
    except (orjson.JSONDecodeError, KeyError, IndexError, TypeError):
        return "unparsed error body"


@dataclass
class Answer:
    at: float  # time.monotonic() when the answer arrived
    latency_ms: float
    status: int  # 0 = no HTTP answer (connection error or timeout)
    degraded: bool | None = None
    version: str | None = None
    error: str | None = None


@dataclass
class Run:
    answers: list[Answer] = field(default_factory=list)
    offered: int = 0
    seconds: float = 0.0

    def of(self, status: int) -> list[Answer]:
        return [a for a in self.answers if a.status == status]

    def shed(self) -> list[Answer]:
        """503s of admission control (overload, or a deadline passed): the service refusing work
        it cannot do in time, which is what it should do, counted apart from failures."""
        return [a for a in self.answers if a.status == 503 and a.error in SHED_KINDS]

    def summary(self) -> dict[str, Any]:
        ok, rejected = self.of(200), self.shed()
        other = [a for a in self.answers if a.status != 200 and a not in rejected]
        return {
            "offered": self.offered,
            "offered_rps": self.offered / max(self.seconds, 1e-9),
            "ok": len(ok),
            "ok_rps": len(ok) / max(self.seconds, 1e-9),
            "rejected_503": len(rejected),
            "share_503": len(rejected) / max(len(self.answers), 1),
            "other_5xx": sum(1 for a in other if a.status >= 500),
            "failed": len(other),
            "ok_p50_ms": pct(ok, 50),
            "ok_p99_ms": pct(ok, 99),
            "reject_p50_ms": pct(rejected, 50),
            "reject_p99_ms": pct(rejected, 99),
            "error_kinds": dict(Counter((a.error or f"HTTP {a.status}")[:80] for a in other).most_common(3)),
        }


def pct(answers: list[Answer], q: float) -> float:
    return float(np.percentile([a.latency_ms for a in answers], q)) if answers else float("nan")


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            if line[:15].lower() == "content-length:":
                length = int(line[15:])
        return status, await self.reader.readexactly(length)


def post(path: str, body: bytes, host: str, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


async def open_loop(
    url: str,
    make_request: Callable[[int], bytes],
    rate: float,
    seconds: float,
    max_connections: int = 256,
    timeout: float = 10.0,
    on_tick: Callable[[float], None] | None = None,
    stop: asyncio.Event | None = None,
    pool: list[_Connection] | None = None,
) -> Run:
    """Sends ``make_request(i)`` at ``rate`` per second for ``seconds`` (or, with ``stop``, until
    it is set, at most ``seconds``); returns every answer. With ``pool``, keep-alive connections
    are taken from it and left in it for the next run, as an upstream's connection pool does;
    otherwise they are opened for this run and closed after it."""
    host, port = url.removeprefix("http://").split(":")
    idle: list[_Connection] = pool if pool is not None else []
    opened = 0
    slots = asyncio.Semaphore(max_connections)
    run = Run()
    t0 = time.monotonic()

    async def one(i: int, scheduled: float) -> None:
        nonlocal opened
        async with slots:
            conn = idle.pop() if idle else None
            try:
                if conn is not None:
                    try:
                        status, body = await asyncio.wait_for(conn.request(make_request(i)), timeout)
                    except asyncio.IncompleteReadError as e:
                        if e.partial:
                            raise
                        # The server closed this keep-alive connection while it was idle (uvicorn
                        # does after 5 s); like any HTTP client, retry once on a new one.
                        conn.writer.close()
                        conn = None
                if conn is None:
                    opened += 1
                    conn = _Connection(*await asyncio.open_connection(host, int(port)))
                    status, body = await asyncio.wait_for(conn.request(make_request(i)), timeout)
                answer = Answer(time.monotonic(), (time.monotonic() - scheduled) * 1000, status)
                if status == 200 and body.startswith(b'{"request_id"'):  # a /score answer
                    parsed = orjson.loads(body)
                    answer.degraded, answer.version = parsed["degraded"], parsed["model_version"]
                elif status == 503:
                    answer.error = refusal_kind(body)
                run.answers.append(answer)
                idle.append(conn)
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as e:
                latency = (time.monotonic() - scheduled) * 1000
                run.answers.append(Answer(time.monotonic(), latency, 0, error=repr(e)))
                if conn is not None:
                    conn.writer.close()

    tasks = []
    interval, i = 1.0 / rate, 0
    next_tick = 1.0
    while (now := time.monotonic()) - t0 < seconds and not (stop is not None and stop.is_set()):
        scheduled = t0 + i * interval
        if scheduled > now:
            await asyncio.sleep(scheduled - now)
        tasks.append(asyncio.create_task(one(i, scheduled)))
        i += 1
        if on_tick is not None and now - t0 >= next_tick:
            on_tick(now - t0)
            next_tick += 1.0
    run.offered = i
    run.seconds = time.monotonic() - t0
    await asyncio.gather(*tasks)
    if pool is None:
        for conn in idle:
            conn.writer.close()
    return run


async def closed_loop(
    url: str, make_request: Callable[[int], bytes], concurrency: int, seconds: float
) -> Run:
    """``concurrency`` clients each sending the next request as soon as the last one is answered."""
    host, port = url.removeprefix("http://").split(":")
    run = Run()
    t0 = time.monotonic()
    counter = iter(range(10**12))

    async def client() -> None:
        conn = _Connection(*await asyncio.open_connection(host, int(port)))
        while time.monotonic() - t0 < seconds:
            start = time.monotonic()
            status, _ = await conn.request(make_request(next(counter)))
            run.answers.append(Answer(time.monotonic(), (time.monotonic() - start) * 1000, status))
        conn.writer.close()

    await asyncio.gather(*(client() for _ in range(concurrency)))
    run.offered, run.seconds = len(run.answers), time.monotonic() - t0
    return run
