"""The service benchmark's report: rows against the floors, and the service against the baseline."""

from __future__ import annotations

from devtools.bench_service import log_cost, medians, table, versus_baseline


def row(
    build: str, c: int, p50: float, rps: float, logging: str = "on", round_: int = 0, cpu: float = 2.0
) -> dict:
    labels = (
        {"build": build}
        if build == "baseline"
        else {"build": build, "microbatch_ms": 0.0, "logging": logging}
    )
    return {"n": 200, "l": 50, "concurrency": c, "p50_ms": p50, "p95_ms": p50, "p99_ms": p50, "rps": rps,
            "loop_cpu_ms": 1.0, "cpu_ms": cpu, "redis_cpu_ms": 0.1, "requests": 100, "errors": 0,
            "round": round_, **labels}  # fmt: skip


ROWS = [
    row("service", 1, 2.0, 500), row("service", 16, 20.0, 800),
    row("service", 1, 1.5, 600, "off"), row("service", 16, 15.0, 1000, "off"),
    row("baseline", 1, 8.0, 120), row("baseline", 16, 100.0, 160),
]  # fmt: skip


def test_each_row_gives_its_median_against_the_sum_of_the_floors_and_its_cpu_against_the_cpu_floor():
    lines = table(ROWS, {"sum_ms": 1.0, "cpu_ms": 1.05}).splitlines()
    assert len(lines) == 2 + len(ROWS)
    assert "| service, micro-batch 0 ms, log on | 200 | 50 | 1 | 2.00 | 2.0× |" in lines[2]
    assert lines[2].endswith("| 1.00 | 2.10 | 2.0× | 0 |")  # (server 2.0 + Redis 0.1) / 1.05
    assert lines[-1].startswith("| baseline | 200 | 50 | 16 | 100.00 | 100.0× |")
    two = table([ROWS[0] | {"workers": 2}], {"sum_ms": 1.0, "cpu_ms": 1.0}).splitlines()[2]
    assert two.startswith("| service, 2 workers, micro-batch 0 ms, log on |")


def test_the_service_with_its_log_on_is_compared_with_the_baseline():
    text = versus_baseline(ROWS)
    assert "impression log on" in text
    assert "2.00 vs 8.00 ms (4.0× lower)" in text and "800 vs 160 requests/s (5.0× higher)" in text
    assert versus_baseline(ROWS[:4]) == ""  # no baseline measured


def test_rows_of_several_rounds_become_one_median_row_per_setup():
    rounds = [
        row("service", 16, p50, rps, round_=k)
        for k, (p50, rps) in enumerate([(20, 800), (30, 500), (10, 900)])
    ]
    (summary,) = medians(rounds)
    assert summary["p50_ms"] == 20 and summary["rps"] == 800 and summary["rounds"] == 3
    assert summary["requests"] == 300 and "round" not in summary


def test_the_log_cost_pairs_each_rounds_on_run_with_the_same_rounds_off_run():
    # Round 0 ran on a quiet machine, round 1 on a busy one: paired, the log costs 10% and 20% of the
    # throughput; unpaired medians would mix the rounds.
    rounds = [
        row("service", 16, 20.0, 900, "on", 0, cpu=2.5), row("service", 16, 15.0, 1000, "off", 0),
        row("service", 16, 40.0, 400, "on", 1, cpu=2.7), row("service", 16, 30.0, 500, "off", 1),
        row("service", 1, 2.2, 450, "on", 0), row("service", 1, 2.0, 500, "off", 0),
        row("baseline", 16, 100.0, 160),
    ]  # fmt: skip
    text = log_cost(rounds)
    assert "N = 200, c = 16: throughput -15.0% (rounds: -20.0% to -10.0%) over 2 paired round(s)" in text
    assert "adds 0.60 ms of CPU per request" in text  # the median of 0.5 and 0.7
    assert "c = 1: median +10.0% over 1 paired round(s)" in text
    assert log_cost([r for r in rounds if r.get("logging") != "off"]) == ""  # nothing to pair with


def test_the_cpu_of_every_worker_process_is_counted(tmp_path):
    """With several workers the server is a supervisor and its children: their event loops and all
    their threads count, not the supervisor's main thread alone."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from devtools.bench_service import cpu_seconds

    ready = tmp_path / "ready"
    work = "x = 0\nfor i in range(10**7): x += i\n"
    child = f"{work}open({str(ready)!r}, 'w').close()\nimport time; time.sleep(60)"
    parent = (
        f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    )
    proc = subprocess.Popen([sys.executable, "-c", parent], start_new_session=True)
    try:
        while not ready.exists():
            time.sleep(0.05)
        loops, total = cpu_seconds(proc.pid)
        # the child's ten million additions are CPU time the parent's main thread never spent
        assert loops >= 0.05 and total >= loops
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
