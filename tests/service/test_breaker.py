"""The Redis circuit breaker: open after failures, one trial at a time after the reset, close on success."""

from __future__ import annotations

import time

from prometheus_client import generate_latest

from service.breaker import CircuitBreaker
from service.metrics import Metrics


def test_opens_after_the_threshold_and_refuses_until_the_reset():
    b = CircuitBreaker(failures=2, reset_seconds=60)
    assert b.allow() and b.state == "closed"
    b.failure()
    assert b.allow() and b.state == "closed"  # one failure is below the threshold
    b.failure()
    assert b.state == "open" and not b.allow()


def test_half_open_lets_one_trial_through_and_its_result_decides():
    metrics = Metrics()
    b = CircuitBreaker(failures=1, reset_seconds=0.02, metrics=metrics)
    b.failure()
    assert not b.allow()
    assert "din_redis_breaker_open 1.0" in generate_latest(metrics.registry).decode()
    time.sleep(0.03)
    assert b.state == "half-open" and b.allow() and not b.allow()  # only one trial at a time
    b.failure()  # the trial failed: open again, for another reset period
    assert b.state == "open" and not b.allow()
    time.sleep(0.03)
    assert b.allow()
    b.success()
    assert b.state == "closed" and b.allow() and b.allow()
    assert "din_redis_breaker_open 0.0" in generate_latest(metrics.registry).decode()


def test_a_success_resets_the_failure_count():
    b = CircuitBreaker(failures=2, reset_seconds=60)
    b.failure()
    b.success()
    b.failure()
    assert b.state == "closed"


def test_twins_break_apart_and_the_gauge_shows_open_while_either_is():
    metrics = Metrics()
    reads = CircuitBreaker(failures=1, reset_seconds=60, metrics=metrics)
    writes = reads.twin()
    reads.failure()
    assert not reads.allow() and writes.allow()  # a read timing out does not refuse the writes
    writes.failure()
    reads.success()
    assert "din_redis_breaker_open 1.0" in generate_latest(metrics.registry).decode()
    writes.success()
    assert "din_redis_breaker_open 0.0" in generate_latest(metrics.registry).decode()
