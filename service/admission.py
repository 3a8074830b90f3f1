"""The admission policy: shed by expected wait, and only against a standing queue.

A fixed bound on requests in flight is wrong both ways: one small enough to keep latency low under
overload also refuses the bursts of a half-loaded worker, and one large enough for bursts lets an
overload queue up (docs/design.md has the measurements). So, as CoDel does for
packets, a worker tells a burst, which drains by itself, from a standing queue, which only
shedding drains:

- ``WaitEstimate``: the wait a newcomer would have behind the requests in flight, from how fast
  this worker finishes requests while busy (it adapts to the machine and the request size);
- ``StandingQueue``: refuse a newcomer that would wait past the budget only once the expected wait
  has stayed past it for an interval, and keep refusing until it has stayed below half the budget
  for an interval; a burst is admitted unless it would wait past a hard ceiling.
"""

from __future__ import annotations


class WaitEstimate:
    """Seconds a newcomer would wait behind ``k`` requests in flight: k times the time the worker
    takes per completion while it stays busy. That is busy time over completions, each decayed by
    ``decay`` per completion (a window of about 1 / (1 - decay) completions); a gap after which the
    worker went idle says nothing about its speed and is left out.

    A ratio of sums, not an average of clamped gaps: completions come in bursts (the event loop
    sends several finished answers in a row, then works through new bodies), and clamping the
    long gaps of such a pattern drove an averaged estimate to a fraction of the true time per
    completion, so a sudden overload was admitted several times past the budget. A single request
    stalled on I/O still moves the ratio only by its share of the window."""

    def __init__(self, decay: float = 0.95):
        self.decay = decay
        self._busy = 0.0  # decayed busy seconds between completions
        self._count = 0.0  # decayed number of those completions
        self._busy_since: float | None = None  # the last completion that left work in flight

    def completed(self, now: float, still_in_flight: int) -> None:
        if self._busy_since is not None:
            self._busy = self.decay * self._busy + (now - self._busy_since)
            self._count = self.decay * self._count + 1
        self._busy_since = now if still_in_flight else None

    @property
    def seconds_per_completion(self) -> float:
        return self._busy / self._count if self._count else 0.0  # 0 until busy once: admit

    def wait(self, in_flight: int) -> float:
        return in_flight * self.seconds_per_completion


class StandingQueue:
    """Decides, from successive expected waits, whether to refuse a newcomer."""

    def __init__(self, budget: float, interval: float = 0.1, ceiling: float = 3.0):
        self.budget, self.interval = budget, interval  # seconds
        self.ceiling = ceiling * budget  # no newcomer waits longer, standing queue or not
        self.shedding = False
        self._over_since: float | None = None  # expected wait > budget continuously since
        self._calm_since: float | None = None  # expected wait <= budget / 2 continuously since

    def refuse(self, wait: float, now: float) -> bool:
        over, calm = wait > self.budget, wait <= self.budget / 2
        self._over_since = _held_since(over, self._over_since, now)
        self._calm_since = _held_since(calm, self._calm_since, now)
        if self._over_since is not None and now - self._over_since >= self.interval:
            self.shedding = True
        if self._calm_since is not None and now - self._calm_since >= self.interval:
            self.shedding = False
        return wait > self.ceiling or (self.shedding and over)


def _held_since(condition: bool, since: float | None, now: float) -> float | None:
    """When ``condition`` started to hold without a break (None while it does not hold)."""
    if not condition:
        return None
    return now if since is None else since
