"""The service benchmark's report: rows against the floors, and the service against the baseline."""

from __future__ import annotations

from bench_service import table, versus_baseline


def row(build: str, c: int, p50: float, rps: float, logging: str = "on") -> dict:
    labels = (
        {"build": build}
        if build == "baseline"
        else {"build": build, "microbatch_ms": 0.0, "logging": logging}
    )
    return {"n": 200, "l": 50, "concurrency": c, "p50_ms": p50, "p95_ms": p50, "p99_ms": p50, "rps": rps,
            "loop_cpu_ms": 1.0, "errors": 0, **labels}  # fmt: skip


ROWS = [
    row("service", 1, 2.0, 500), row("service", 16, 20.0, 800),
    row("service", 1, 1.5, 600, "off"), row("service", 16, 15.0, 1000, "off"),
    row("baseline", 1, 8.0, 120), row("baseline", 16, 100.0, 160),
]  # fmt: skip


def test_each_row_gives_its_median_against_the_sum_of_the_floors():
    lines = table(ROWS, {"sum_ms": 1.0}).splitlines()
    assert len(lines) == 2 + len(ROWS)
    assert "| service, micro-batch 0 ms, log on | 200 | 50 | 1 | 2.00 | 2.0× |" in lines[2]
    assert lines[-1].startswith("| baseline | 200 | 50 | 16 | 100.00 | 100.0× |")


def test_the_service_with_its_log_on_is_compared_with_the_baseline():
    text = versus_baseline(ROWS)
    assert "impression log on" in text
    assert "2.00 vs 8.00 ms (4.0× lower)" in text and "800 vs 160 requests/s (5.0× higher)" in text
    assert versus_baseline(ROWS[:4]) == ""  # no baseline measured
