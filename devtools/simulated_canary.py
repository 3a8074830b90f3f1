"""Online experiments in the simulated world: a canary beside the serving version on the real
service, decided by ``scripts/experiment.py status --auto`` while the simulated users keep visiting.

    python scripts/simulate.py --experiment better                 # trained on more logs: promoted
    python scripts/simulate.py --experiment broken                 # shuffled labels: aborted
    python scripts/simulate.py --experiment identical --repeat 20  # "no difference"; false decisions
    python scripts/simulate.py --experiment all --quick            # the three, small

The setup is the closed loop's first days: the cold model serves ``--warmup-days`` days and the
logs are exported. The stable version is trained on the oldest ``--stable-share`` of those logs and
deployed. Each canary is started as a user starts one, with ``scripts/redeploy.py --canary P``:

- better: trained on all of the logs (the gate passes it);
- broken: trained from scratch on the logs with their labels shuffled; the gate would refuse it,
  so ``ANY_VERDICT`` lets it through, as a gate scored on a stale or wrong test set would;
- identical: the stable version's own checkpoint, exported under a new name.

Then ``experiment.py status --auto`` looks every ``--interval`` seconds while users visit at
``--rate`` a second, and promotes or aborts through the pointer. Each run reports the decision, the
canary's impressions (at the deciding look, and all it served), the measured lift with its
interval, and the true lift (``Tally.true_lift``), from the simulator's own count of what each
arm's version served its users, judged by the ground truth.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from contracts.canary import Canary
from contracts.repository import ModelRepository
from devtools.liveserver import ROOT
from devtools.simworld import USER_BASE, Simulation, Visit, run_cmd, visit
from devtools.stack import ANY_VERDICT
from model.data import FEEDBACK_COMMITS, read_feedback
from model.onnx_export import export_bundle

KINDS = ("better", "broken", "identical")
FALSE = ("promote", "abort")  # between identical versions, either is a false decision


def derive_logs(src: Path, dst: Path, table: pa.Table) -> Path:
    """An exported folder holding ``table`` (rows of ``src``), readable by model.train --data."""
    import pyarrow.parquet as pq

    (dst / "derived").mkdir(parents=True, exist_ok=True)
    pq.write_table(table, dst / "derived" / "part-0.parquet")
    commit = {"first": "0-0", "last": "0-0", "files": ["derived/part-0.parquet"], "rows": table.num_rows,
              "at": time.time(), "derived_from": str(src)}  # fmt: skip
    (dst / FEEDBACK_COMMITS).write_text(json.dumps(commit) + "\n")
    return dst


def shuffled(table: pa.Table, seed: int) -> pa.Table:
    labels = table["label"].to_numpy()
    index = table.schema.get_field_index("label")
    return table.set_column(index, "label", pa.array(np.random.default_rng(seed).permutation(labels)))


class Tally:
    """What each arm's version served its users, as the simulator saw it, with the ground truth:
    the expected clicks of what was shown, and of the oracle's top k on the same slates."""

    def __init__(self, stable: str, canary: Canary):
        self.stable, self.canary = stable, canary
        self.arms = {arm: {"impressions": 0, "clicks": 0, "expected_clicks": 0.0, "oracle_clicks": 0.0}
                     for arm in ("stable", "canary")}  # fmt: skip
        self.canary_served = 0

    def add(self, user_id: int, v: Visit) -> None:
        if v.version == self.canary.version:
            self.canary_served += len(v.shown_p)
        arm = "canary" if self.canary.takes(user_id) else "stable"
        if v.version != (self.canary.version if arm == "canary" else self.stable):
            return  # before the canary reached the service, or after the decision did
        t = self.arms[arm]
        t["impressions"] += len(v.shown_p)
        t["clicks"] += v.clicks
        t["expected_clicks"] += float(v.shown_p.sum())
        t["oracle_clicks"] += float(np.sort(v.slate_p)[::-1][: len(v.shown_p)].sum())

    def true_lift(self) -> float:
        """The ratio of the arms' shares of the oracle's expected clicks, minus 1: the versions'
        difference under the ground truth, net of which users the split put in which arm (their
        CTRs differ far more than two versions of a model do)."""
        s, c = self.arms["stable"], self.arms["canary"]
        if not s["expected_clicks"] or not c["oracle_clicks"]:
            return math.nan
        return (c["expected_clicks"] / c["oracle_clicks"]) / (s["expected_clicks"] / s["oracle_clicks"]) - 1


class Lab:
    """The stack with a stable version deployed, and the canaries started beside it."""

    def __init__(self, stack: Simulation, a: argparse.Namespace):
        self.stack, self.a = stack, a
        self.repo = ModelRepository(stack.repo)
        self.cold = stack.runs / "day0" / "run"

    def warm_up(self) -> None:
        s, a = self.stack, self.a
        users = len(s.world.interests)
        for day in range(a.warmup_days):
            for _ in range(a.visits):
                for u in s.world.rng.permutation(users):
                    visit(s.client, s.world, int(u), a.slate, a.k)
            s.export()
            print(
                f"warm-up day {day}: the cold model served {a.visits * users} visits; logs exported",
                flush=True,
            )
        logs = read_feedback(s.logs)
        self.logs = logs
        oldest = derive_logs(
            s.logs, s.work / "logs-stable", logs.slice(0, round(logs.num_rows * a.stable_share))
        )
        if not self.redeploy("stable", ["--data", str(oldest), "--init-from", str(self.cold), *ANY_VERDICT]):
            raise SystemExit(f"the stable version failed to deploy; see {self.stack.log}")
        print(
            f"stable: trained on the oldest {a.stable_share:.0%} of {logs.num_rows} logged impressions",
            flush=True,
        )

    def redeploy(self, version: str | None, args: list[str]) -> bool:
        """scripts/redeploy.py; False when it refused (the gate) or rolled back."""
        cmd = [
            *self.stack.redeploy,
            *self.stack.train,
            *(["--version", version] if version else []),
            *args,
            *self.stack.instance(),
        ]
        return run_cmd(cmd, self.stack.log) == 0

    def start(self, kind: str, rep: int) -> tuple[str, bool]:
        """scripts/redeploy.py --canary P with this kind's candidate: its version, and whether the
        canary started (the gate may refuse it)."""
        s, a = self.stack, self.a
        version, salt = f"{kind}-{rep}", f"{kind}-{rep}-{a.seed}"
        canary = ["--canary", str(a.percent), "--salt", salt]
        if kind == "better":
            started = self.redeploy(version, ["--data", str(s.logs), "--init-from", str(self.cold), *canary])
        elif kind == "broken":
            noise = derive_logs(s.logs, s.work / f"logs-{version}", shuffled(self.logs, rep))
            started = self.redeploy(version, ["--data", str(noise), *ANY_VERDICT, *canary])
        else:
            bundle = s.work / "bundles" / version
            export_bundle(s.runs / "stable" / "run" / "ckpt.pt", bundle, version=version)
            started = self.redeploy(None, ["--bundle", str(bundle), "--data", str(s.logs), *canary])
        return version, started

    def decide(self, kind: str, rep: int) -> dict[str, Any]:
        """Start a canary, run experiment.py status --auto beside the traffic, report the outcome."""
        s, a = self.stack, self.a
        version, started = self.start(kind, rep)
        if not started:
            print(f"{kind}: scripts/redeploy.py did not start {version} (see {s.log})", flush=True)
            current = self.repo.current()
            return {"kind": kind, "canary": version, "salt": "-", "percent": a.percent,
                    "decision": "not started", "current_after": current, "looks": 0,
                    "canary_impressions_at_decision": 0, "stable_impressions_at_decision": 0,
                    "canary_impressions_served": 0, "lift": None, "low": None, "high": None,
                    "p_value": None, "true_lift": math.nan, "arms": {}}  # fmt: skip
        pointer = self.repo.pointer()
        assert pointer is not None and pointer.canary is not None
        tally = Tally(pointer.version, pointer.canary)
        out = s.work / "experiments" / f"{version}.json"
        cmd = [sys.executable, "scripts/experiment.py", "status", "--auto", "--models", str(s.repo),
               *s.instance(), "--redis-url", s.redis.url, "--interval", str(a.interval),
               "--label-window-seconds", "0", "--max-impressions", str(a.max_impressions),
               "--timeout", str(a.timeout), "--json", str(out)]  # fmt: skip
        users, sent, t0 = len(s.world.interests), 0, time.monotonic()
        with open(s.log, "a") as log:
            log.write(f"\n$ {' '.join(cmd)}\n")
            log.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            while proc.poll() is None:
                u = int(s.world.rng.integers(users))
                v = visit(s.client, s.world, u, a.slate, a.k)
                tally.add(USER_BASE + u, v)
                sent += 1
                time.sleep(max(0.0, t0 + sent / a.rate - time.monotonic()))
        look = json.loads(out.read_text()) if out.exists() else {}
        after = self.repo.pointer()
        assert after is not None
        decision = (
            look.get("decision", "none") if proc.returncode == 0 else f"undecided (exit {proc.returncode})"
        )
        report = {"kind": kind, "canary": version, "salt": pointer.canary.salt, "percent": a.percent,
                  "decision": decision, "current_after": after.version, "looks": look.get("looks", 0),
                  "canary_impressions_at_decision": look.get("canary", {}).get("impressions", 0),
                  "stable_impressions_at_decision": look.get("stable", {}).get("impressions", 0),
                  "canary_impressions_served": tally.canary_served,
                  "lift": look.get("lift"), "low": look.get("low"), "high": look.get("high"),
                  "p_value": look.get("p_value"), "true_lift": tally.true_lift(), "arms": tally.arms,
                  "visits": sent, "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
        if after.canary is None and after.version != pointer.version:
            # A promoted canary: roll back, so that the next run compares against the stable again.
            rollback = [sys.executable, "scripts/redeploy.py", "--models", str(s.repo), "--rollback",
                        *s.instance()]  # fmt: skip
            if run_cmd(rollback, s.log):
                raise SystemExit(f"scripts/redeploy.py --rollback failed; see {s.log}")
        print(summary(report), flush=True)
        return report


def summary(r: dict[str, Any]) -> str:
    lift = (
        ""
        if r["lift"] is None
        else f"lift {r['lift']:+.1%} [{r['low']:+.1%}, {r['high']:+.1%}], p {r['p_value']:.3g}; "
    )
    return (
        f"{r['kind']} ({r['canary']} on {r['percent']:g}%, salt {r['salt']}): {r['decision']} after "
        f"{r['looks']} looks; {lift}true lift {r['true_lift']:+.1%}; the canary served "
        f"{r['canary_impressions_served']} impressions "
        f"({r['canary_impressions_at_decision']} at the decision)"
    )


def add_experiment_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--experiment", nargs="+", choices=[*KINDS, "all"], help="run online experiments instead of the loop"
    )
    p.add_argument("--repeat", type=int, default=1, help="runs of each experiment, each with its own salt")
    p.add_argument("--warmup-days", type=int, default=2, help="days the cold model serves before the setup")
    p.add_argument("--stable-share", type=float, default=0.1, help="of the warm-up logs, the stable's oldest")
    p.add_argument("--percent", type=float, default=50.0, help="the canary's share of the users")
    p.add_argument("--rate", type=float, default=50.0, help="visits a second during an experiment")
    p.add_argument("--interval", type=float, default=2.0, help="experiment.py --interval")
    p.add_argument("--max-impressions", type=int, default=100_000, help="experiment.py --max-impressions")
    p.add_argument("--timeout", type=float, default=1800.0, help="experiment.py --timeout, per run")


def check_experiment_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.repeat < 1 or a.warmup_days < 1 or not 0 < a.stable_share < 1 or not 0 < a.percent < 100:
        p.error("--repeat and --warmup-days >= 1, --stable-share in (0, 1), --percent in (0, 100)")
    if a.rate <= 0 or a.interval <= 0 or a.max_impressions < 1 or a.timeout <= 0:
        p.error("--rate, --interval, --max-impressions and --timeout must be > 0")


def run_experiments(stack: Simulation, a: argparse.Namespace) -> dict[str, Any]:
    lab = Lab(stack, a)
    lab.warm_up()
    kinds = [k for k in KINDS if k in a.experiment or "all" in a.experiment]
    runs = [lab.decide(kind, rep) for kind in kinds for rep in range(a.repeat)]
    identical = [r for r in runs if r["kind"] == "identical"]
    false = sum(r["decision"] in FALSE for r in identical)
    return {"runs": runs, "identical_runs": len(identical), "false_decisions": false,
            "false_decision_rate": false / len(identical) if identical else None}  # fmt: skip


def experiments_table(result: dict[str, Any]) -> str:
    md = "| experiment | salt | decision | looks | canary impressions at the decision | served by the canary "
    md += "| lift [interval] | p | true lift |\n" + "|---" * 9 + "|\n"
    rows = []
    for r in result["runs"]:
        lift = "-" if r["lift"] is None else f"{r['lift']:+.1%} [{r['low']:+.1%}, {r['high']:+.1%}]"
        p = "-" if r["p_value"] is None else f"{r['p_value']:.3g}"
        served = f"{r['canary_impressions_at_decision']} | {r['canary_impressions_served']}"
        rows.append(f"| {r['kind']} | `{r['salt']}` | {r['decision']} | {r['looks']} | {served} | {lift} "
                    f"| {p} | {r['true_lift']:+.1%} |")  # fmt: skip
    md += "\n".join(rows)
    if result["identical_runs"]:
        md += (
            f"\n\nIdentical copies: {result['false_decisions']} false decisions (promote or abort) in "
            f"{result['identical_runs']} runs ({result['false_decision_rate']:.0%})."
        )
    return md + f"\n\n`{result['command']}`; machine: {result['machine']}."
