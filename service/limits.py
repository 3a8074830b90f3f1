"""Limits enforced before a request reaches a route: body size, and admission control.

Admission control (the policy is in ``service.admission``) answers 503 with Retry-After at once,
before the body is read, so an overload costs a refused client microseconds and the accepted ones
keep their latency. It counts requests inside the app: uvicorn's --limit-concurrency would also
count idle keep-alive connections. Each admitted request also gets a deadline (DIN_DEADLINE_MS, or
the client's X-Deadline-Ms header); work that would start after it is dropped with 503.
"""

from __future__ import annotations

import time

from opentelemetry.trace import get_current_span
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.admission import StandingQueue, WaitEstimate
from service.deadline import Deadline
from service.errors import InvalidInput, Overloaded, PayloadTooLarge, send_error
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
        self.shedding = StandingQueue(max_queue_ms / 1000)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        refusal = self._refusal()
        span = get_current_span()  # the request's, when tracing is on and samples it
        if span.is_recording():
            span.set_attributes({"din.admission.in_flight": self.in_flight,
                                 "din.admission.expected_wait_ms": self.estimate.wait(self.in_flight) * 1000,
                                 "din.admission.refused": refusal is not None})  # fmt: skip
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
        wait = self.estimate.wait(self.in_flight)
        if self.max_queue_ms and self.shedding.refuse(wait, time.monotonic()):
            return f"about {wait * 1000:.0f} ms of work queued (budget {self.max_queue_ms:g} ms); retry soon"
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
