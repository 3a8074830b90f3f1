"""The admission policy on its own, with the clock passed in."""

from __future__ import annotations

import pytest

from service.admission import StandingQueue, WaitEstimate

BUDGET = 0.020  # seconds


def test_the_wait_estimate_learns_only_from_busy_gaps_between_completions():
    est = WaitEstimate(decay=0.5)
    est.completed(0.000, still_in_flight=2)  # first completion: nothing to compare with yet
    assert est.seconds_per_completion == 0
    est.completed(0.002, still_in_flight=1)
    assert est.seconds_per_completion == pytest.approx(0.002)
    est.completed(0.004, still_in_flight=0)  # same gap; then the worker goes idle
    est.completed(1.000, still_in_flight=1)  # the idle second is not a service time
    assert est.seconds_per_completion == pytest.approx(0.002)
    est.completed(1.005, still_in_flight=1)  # busy 0.5*0.003 + 0.005, count 0.5*1.5 + 1
    assert est.seconds_per_completion == pytest.approx(0.0065 / 1.75)
    assert est.wait(4) == pytest.approx(4 * 0.0065 / 1.75)


def test_bursty_completions_are_estimated_at_their_true_mean_time():
    """Five answers 0.1 ms apart, then 14.6 ms of work: 3 ms per completion on average. The old
    average of gaps clamped at twice the estimate drifted to a fraction of that."""
    est, now = WaitEstimate(), 0.0
    est.completed(now, still_in_flight=10)
    for _ in range(40):
        for gap in (0.0146, 0.0001, 0.0001, 0.0001, 0.0001):
            now += gap
            est.completed(now, still_in_flight=10)
    assert est.seconds_per_completion == pytest.approx(0.003, rel=0.15)


def test_one_stalled_request_moves_the_estimate_by_its_share_of_the_window():
    est, now = WaitEstimate(decay=0.95), 0.0
    est.completed(now, still_in_flight=5)
    for _ in range(200):
        now += 0.002
        est.completed(now, still_in_flight=5)
    est.completed(now + 0.050, still_in_flight=5)  # a Redis timeout: 25 times the usual gap
    assert 0.002 < est.seconds_per_completion < 0.002 + 0.05 * 0.05 * 1.01


def test_a_burst_past_the_budget_is_admitted_when_it_does_not_last_an_interval():
    gate = StandingQueue(BUDGET, interval=0.1, ceiling=3)
    assert not gate.refuse(0.005, now=0.00)
    assert not gate.refuse(0.045, now=0.01)  # a burst: past the budget, under the 60 ms ceiling
    assert not gate.refuse(0.050, now=0.08)
    assert not gate.refuse(0.008, now=0.09)  # drained before an interval passed
    assert not gate.refuse(0.030, now=0.20) and not gate.shedding


def test_a_wait_past_the_ceiling_is_refused_even_in_a_burst():
    gate = StandingQueue(BUDGET, interval=0.1, ceiling=3)
    assert gate.refuse(0.061, now=0.0) and not gate.shedding


def test_a_standing_queue_sheds_past_the_budget_until_it_stays_below_half_for_an_interval():
    gate = StandingQueue(BUDGET, interval=0.1, ceiling=3)
    assert not gate.refuse(0.030, now=0.00)
    assert not gate.refuse(0.040, now=0.05)
    assert gate.refuse(0.025, now=0.10) and gate.shedding  # past the budget for a whole interval
    assert not gate.refuse(0.015, now=0.12)  # shedding, but this one waits within the budget
    assert gate.refuse(0.021, now=0.13)
    assert not gate.refuse(0.009, now=0.14) and gate.shedding  # calm, but not for an interval yet
    assert gate.refuse(0.021, now=0.20)  # the calm spell broke: still shedding
    assert not gate.refuse(0.005, now=0.21)
    assert not gate.refuse(0.004, now=0.31) and not gate.shedding  # calm for an interval: stop
    assert not gate.refuse(0.030, now=0.32)  # a new burst is admitted again
