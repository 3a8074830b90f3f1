"""The admission policy on its own, with the clock passed in."""

from __future__ import annotations

import pytest

from service.admission import StandingQueue, WaitEstimate

BUDGET = 0.020  # seconds


def test_the_wait_estimate_learns_only_from_busy_gaps_between_completions():
    est = WaitEstimate(smoothing=0.1)
    est.completed(0.000, still_in_flight=2)  # first completion: nothing to compare with yet
    est.completed(0.002, still_in_flight=1)
    assert est.seconds_per_completion == pytest.approx(0.002)
    est.completed(0.004, still_in_flight=0)  # same gap; then the worker goes idle
    est.completed(1.000, still_in_flight=1)  # the idle second is not a service time
    assert est.seconds_per_completion == pytest.approx(0.002)
    est.completed(1.003, still_in_flight=1)
    assert est.seconds_per_completion == pytest.approx(0.002 + 0.1 * (0.003 - 0.002))
    est.completed(1.503, still_in_flight=0)  # one request stalled 0.5 s: counted as 2x, not 250x
    assert est.seconds_per_completion == pytest.approx(0.0021 + 0.1 * 0.0021)
    assert est.wait(5) == pytest.approx(5 * 0.00231)


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
