"""Limits enforced before a request reaches a route: body size, and admission control.

Admission control sheds load by expected wait, as a queue with a delay budget does (Triton's
max_queue_delay, CoDel's target), not by a fixed count: a fixed count small enough to keep latency
low under overload also refuses the harmless bursts of a half-loaded worker, and one large enough
for bursts lets an overload queue up. Each worker measures how long it takes to finish one more
request while busy; a newcomer that would wait longer than DIN_MAX_QUEUE_MS behind the requests
already in flight gets 503 with Retry-After at once, before its body is read, so an overload costs
a refused client microseconds and the accepted ones keep their latency. DIN_MAX_IN_FLIGHT is a
hard cap behind it. It counts requests inside the app: uvicorn's --limit-concurrency would also
count idle keep-alive connections. Each admitted request also gets a deadline (DIN_DEADLINE_MS, or
the client's X-Deadline-Ms header); work that would start after it is dropped with 503.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import DeadlineExceeded, InvalidInput, Overloaded, PayloadTooLarge, send_error
from service.metrics import Metrics

DEADLINE_HEADER = b"x-deadline-ms"


class BodySizeLimit:
    """A cap on the request body, enforced while it streams in (Content-Length can be absent)."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = PayloadTooLarge(f"body larger than {self.max_bytes} bytes", ("body",))
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await send_error(send, too_large)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise too_large
            return message

        try:
            await self.app(scope, limited, send)
        except PayloadTooLarge as e:
            await send_error(send, e)


@dataclass(frozen=True)
class Deadline:
    expires_at: float  # time.monotonic()
    budget_ms: float

    def check(self, stage: str) -> None:
        if time.monotonic() > self.expires_at:
            raise DeadlineExceeded(f"the request's {self.budget_ms:g} ms deadline passed before {stage}")


class WaitEstimate:
    """Seconds a newcomer would wait behind ``k`` requests in flight: k times the time the worker
    takes to finish one more request while it stays busy (an EWMA of the gaps between completions
    that left work behind; a gap after which the worker went idle says nothing about its speed).
    One gap moves the estimate at most 2x: a single request stalled on I/O (a Redis timeout) must
    not shed the requests queued behind it, while a standing queue still raises it in a few
    completions."""

    def __init__(self, smoothing: float = 0.1):
        self.smoothing = smoothing
        self.seconds_per_completion = 0.0  # 0 until the worker has been busy once: admit
        self._busy_since: float | None = None  # the last completion that left work in flight

    def completed(self, now: float, still_in_flight: int) -> None:
        if self._busy_since is not None:
            gap, s = now - self._busy_since, self.seconds_per_completion
            self.seconds_per_completion = gap if s == 0 else s + self.smoothing * (min(gap, 2 * s) - s)
        self._busy_since = now if still_in_flight else None

    def wait(self, in_flight: int) -> float:
        return in_flight * self.seconds_per_completion


class AdmissionControl:
    def __init__(
        self,
        app: ASGIApp,
        paths: set[str],
        max_in_flight: int,
        max_queue_ms: float,
        deadline_ms: float,
        metrics: Metrics,
    ):
        self.app, self.paths, self.max_in_flight = app, paths, max_in_flight
        self.max_queue_ms, self.deadline_ms, self.metrics = max_queue_ms, deadline_ms, metrics
        self.in_flight = 0  # the event loop is single-threaded: a plain counter is exact
        self.estimate = WaitEstimate()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        refusal = self._refusal()
        if refusal is not None:
            self.metrics.rejected.labels(reason="overload").inc()
            await send_error(send, Overloaded(refusal))
            return
        try:
            budget = self._budget_ms(scope)
        except InvalidInput as e:
            await send_error(send, e)
            return
        if budget:
            scope.setdefault("state", {})["deadline"] = Deadline(time.monotonic() + budget / 1000, budget)
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_flight -= 1
            self.estimate.completed(time.monotonic(), self.in_flight)
            self.metrics.in_flight.set(self.in_flight)
            self.metrics.expected_wait.set(self.estimate.wait(self.in_flight))

    def _refusal(self) -> str | None:
        if self.in_flight >= self.max_in_flight:
            return f"{self.in_flight} requests in flight; retry shortly"
        wait_ms = self.estimate.wait(self.in_flight) * 1000
        if self.max_queue_ms and wait_ms > self.max_queue_ms:
            return f"about {wait_ms:.0f} ms of work queued (budget {self.max_queue_ms:g} ms); retry shortly"
        return None

    def _budget_ms(self, scope: Scope) -> float:
        raw = dict(scope["headers"]).get(DEADLINE_HEADER)
        if raw is None:
            return self.deadline_ms
        try:
            budget = float(raw)
        except ValueError:
            budget = -1.0
        if not 0 < budget <= 60_000:
            raise InvalidInput(
                "X-Deadline-Ms must be a number of milliseconds in (0, 60000]", ("header", "x-deadline-ms")
            )
        return budget
