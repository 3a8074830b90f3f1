"""Reliability suite: the service under overload and at its onset, a Redis outage, a redeploy, a
canary experiment started, promoted and aborted,
fuzzing, concurrent writers and a soak, each printing its figures and writing
runs/reliability/<scenario>.json.

    python scripts/reliability.py all --readme docs/benchmarks.md        # the full runs (about 14 minutes)
    python scripts/reliability.py overload redis-outage --scale 0.5

Every scenario runs the real service (SERVE_COMMAND, one worker) against a redis-server this
script starts on a spare port and removes afterwards, with a small DIN trained on SYNTHETIC data
(L = 50 behaviours per user, N = 200 candidates per /score). Capacity is measured first, in the
same run, and the offered loads are multiples of it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from devtools.benchutil import machine, replace_readme_block
from devtools.harness import prepare, write_report
from devtools.liveserver import ROOT
from devtools.scenarios import SCENARIOS, readme_table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", nargs="+", choices=[*SCENARIOS, "all"])
    p.add_argument("--scale", type=float, default=1.0, help="shrink durations and counts (CI runs 0.05)")
    p.add_argument("--out", type=Path, default=ROOT / "runs/reliability")
    p.add_argument("--readme", type=Path, help="replace the reliability block of this file")
    a = p.parse_args(argv)
    names = list(SCENARIOS) if "all" in a.scenario else a.scenario
    workdir = Path(tempfile.mkdtemp(prefix="reliability-"))
    reports = {}
    try:
        suite = prepare(workdir)
        for name in names:
            print(f"== {name}", flush=True)
            reports[name] = SCENARIOS[name](suite, a.scale)
            write_report(a.out, name, reports[name])
    finally:
        suite.redis.kill() if "suite" in locals() else None
        shutil.rmtree(workdir, ignore_errors=True)
    passed = all(r["pass"] for r in reports.values())
    if a.readme is not None:  # every scenario's latest report, so a partial rerun keeps the others
        latest = {
            n: json.loads((a.out / f"{n}.json").read_text())
            for n in SCENARIOS
            if (a.out / f"{n}.json").exists()
        }
        replace_readme_block(a.readme, "reliability", readme_table(latest, machine()))
    print(
        "all scenarios passed"
        if passed
        else "FAILED: " + ", ".join(n for n, r in reports.items() if not r["pass"])
    )
    return 0 if passed else 1
