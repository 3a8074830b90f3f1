"""A circuit breaker for the behaviour store, so an outage costs requests no time.

closed     every call goes to Redis; ``failures`` consecutive failures open the circuit.
open       calls are refused at once (reads degrade, writes answer 503) for ``reset_seconds``.
half-open  then one trial call at a time goes through: success closes the circuit, failure
           opens it again. Recovery after Redis returns therefore takes at most about
           ``reset_seconds`` plus one request, with no thundering herd on a restarting Redis.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from service.metrics import Metrics

log = logging.getLogger("service.breaker")
State = Literal["closed", "open", "half-open"]


class CircuitBreaker:
    def __init__(self, failures: int, reset_seconds: float, metrics: Metrics | None = None):
        self.threshold, self.reset_seconds, self.metrics = failures, reset_seconds, metrics
        self.consecutive_failures = 0
        self.opened_at: float | None = None
        self.trial_in_flight = False
        self._open_group: set[int] = set()  # the ids of the open breakers sharing the gauge

    @property
    def state(self) -> State:
        if self.opened_at is None:
            return "closed"
        return "open" if time.monotonic() - self.opened_at < self.reset_seconds else "half-open"

    def allow(self) -> bool:
        """May a call go to Redis now? In half-open, only one caller at a time gets a yes."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self.trial_in_flight:
            self.trial_in_flight = True
            return True
        return False

    def success(self) -> None:
        if self.opened_at is not None:
            log.info("redis answers again: circuit closed")
        self.consecutive_failures, self.opened_at, self.trial_in_flight = 0, None, False
        self._publish()

    def failure(self) -> None:
        self.consecutive_failures += 1
        self.trial_in_flight = False
        if self.opened_at is not None or self.consecutive_failures >= self.threshold:
            if self.opened_at is None:
                log.warning(
                    "redis failed %d time(s) in a row: circuit open for %.2fs",
                    self.threshold,
                    self.reset_seconds,
                )
            self.opened_at = time.monotonic()
        self._publish()

    def twin(self) -> CircuitBreaker:
        """A breaker with the same settings and the same gauge, which shows 1 while either is
        open: the store's writes have their own, so a read that timed out within the scoring path's
        short budget does not refuse the writes, whose budget is longer."""
        other = CircuitBreaker(self.threshold, self.reset_seconds, self.metrics)
        other._open_group = self._open_group
        return other

    def _publish(self) -> None:
        if self.opened_at is None:
            self._open_group.discard(id(self))
        else:
            self._open_group.add(id(self))
        if self.metrics is not None:
            self.metrics.breaker_open.set(1 if self._open_group else 0)
