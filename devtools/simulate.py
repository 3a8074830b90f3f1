"""A closed loop: simulated users on the real service, learning from its own logs, day after day.

    python scripts/simulate.py --json runs/simulate.json --png runs/simulate.png
    python scripts/simulate.py --quick      # a small version (the test runs it)
    python scripts/simulate.py --experiment better|broken|identical|all   # online experiments

Users have hidden interests over item categories that drift a little every day, and a ground-truth
click probability for every (user, item): their interest in the item's category times the item's
appeal. Each day every user visits a few times; the real service (uvicorn on its own Redis, as
users run it) ranks a random slate of candidates, the user sees the top k and clicks by the ground
truth, and clicks go to /events with the answer's request_id. At the day's end the loop runs, as a
user would: ``python -m jobs.feedback export`` into one folder, then ``scripts/redeploy.py --data
FOLDER --init-from <the serving run>``, which trains on the logs split by time, gates on the newest
slice and rolls the new version out. Day 0 serves a cold model trained on the synthetic generator,
whose items and users share nothing with the simulated ones.

Each day reports the served model's realized CTR, the oracle's expected CTR (the top k by the true
probability, on the same slates), random ranking's expected CTR, and the GAUC of the day's logs.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from contracts.repository import ModelRepository
from devtools.benchutil import machine, replace_readme_block
from devtools.simulated_canary import (
    add_experiment_args,
    check_experiment_args,
    experiments_table,
    run_experiments,
)
from devtools.simworld import Client, Simulation, World, add_world_args, check_world_args, run_cmd, visit
from model.evaluation import gauc


def history_bound(world: World, lengths: list[int], k: int, slate: int, visits: int = 4) -> dict[int, float]:
    """Share of the oracle's CTR that a ranking reaches when it knows every item's appeal and
    guesses each user's interests from ``length`` behaviours alone (the posterior mean under the
    world's Dirichlet prior, from the categories of behaviours drawn as the users' first ones are):
    what any model of the history can do, per history length."""
    rng, c = np.random.default_rng(1), world.interests.shape[1]
    out = {}
    for length in lengths:
        got, best = [], []
        for u in range(len(world.interests)):
            p = world.interests[u, world.category] * world.appeal
            seen = rng.choice(len(p), length, p=p / p.sum())
            guess = (0.3 + np.bincount(world.category[seen], minlength=c)) / (0.3 * c + length)
            for _ in range(visits):
                cands = rng.choice(len(world.category), slate, replace=False)
                truth = world.p_click(u, cands)
                top = np.argsort(-guess[world.category[cands]] * world.appeal[cands])[:k]
                got.append(truth[top].mean())
                best.append(np.sort(truth)[::-1][:k].mean())
        out[length] = float(np.mean(got) / np.mean(best))
    return out


def serve_day(client: Client, world: World, visits: int, slate: int, k: int) -> dict[str, Any]:
    shown = clicks = 0
    oracle, random_ = [], []
    version = None
    for _ in range(visits):
        for u in world.rng.permutation(len(world.interests)):
            v = visit(client, world, int(u), slate, k)
            version, shown, clicks = v.version, shown + len(v.shown_p), clicks + v.clicks
            oracle.append(np.sort(v.slate_p)[::-1][:k].mean())
            random_.append(v.slate_p.mean())
    return {"model_version": version, "impressions": shown, "clicks": clicks, "ctr": clicks / max(shown, 1),
            "oracle_ctr": float(np.mean(oracle)), "random_ctr": float(np.mean(random_))}  # fmt: skip


def day_gauc(logs: Path, exported_before: set[str]) -> float:
    files = [f for f in logs.glob("*/part-*.parquet") if str(f) not in exported_before]
    if not files:
        return float("nan")
    rows = [pq.read_table(f, columns=["user_id", "label", "served_ctr"]) for f in files]
    users = np.concatenate([t["user_id"].to_numpy() for t in rows])
    labels = np.concatenate([t["label"].to_numpy() for t in rows])
    scores = np.concatenate([t["served_ctr"].to_numpy() for t in rows])
    return gauc(users, labels, scores)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--days", type=int, default=6, help="day 0 serves the cold model; then one retrain a day")
    add_world_args(p)
    p.add_argument(
        "--quick",
        action="store_true",
        help="2 days (one retrain), 150 users, 2 visits; with --experiment: 1 visit a warm-up day, 2 epochs, "
        "100 visits a second, at most 6,000 impressions",
    )
    p.add_argument(
        "--bound", action="store_true", help="print what a ranking from the history alone can reach, and stop"
    )
    p.add_argument("--work", type=Path, help="keep everything here (default: a temporary folder)")
    p.add_argument("--json", type=Path)
    p.add_argument("--png", type=Path)
    p.add_argument(
        "--readme",
        type=Path,
        help="replace this file's simulate block (simulate_explore with --explore, experiments with "
        "--experiment) with the table",
    )
    add_experiment_args(p)
    a = p.parse_args(argv)
    if a.quick and a.experiment:  # enough users for the split to decide a broken canary quickly
        a.visits, a.epochs, a.max_impressions, a.rate = 1, 2, min(a.max_impressions, 6000), 100
    elif a.quick:
        a.days, a.users, a.visits, a.epochs = 2, 150, 2, 2
    check_world_args(p, a)
    check_experiment_args(p, a)
    if a.days < 1:
        p.error("--days must be >= 1")

    if a.bound:
        world = World.make(a.users, a.items, a.categories, a.drift, a.seed)
        for length, share in history_bound(world, [5, 10, 20, 40], a.k, a.slate).items():
            print(f"{length} behaviours per user: {share:.0%} of the oracle's CTR")
        return 0

    if a.experiment:
        with tempfile.TemporaryDirectory() as tmp, Simulation(a.work or Path(tmp), a) as stack:
            result = {"command": " ".join(["scripts/simulate.py", *(argv or sys.argv[1:])]),
                      "machine": machine(), **run_experiments(stack, a)}  # fmt: skip
        write_json(a.json, result)
        if a.readme:
            replace_readme_block(a.readme, f"experiments_{'_'.join(a.experiment)}", experiments_table(result))
        return 0
    with tempfile.TemporaryDirectory() as tmp, Simulation(a.work or Path(tmp), a) as stack:
        world, days = stack.world, []
        serving_run = stack.runs / "day0" / "run"
        exported: set[str] = set()
        for day in range(a.days):
            t0 = time.time()
            report = serve_day(stack.client, world, a.visits, a.slate, a.k)
            stack.export()
            report |= {"day": day, "gauc": day_gauc(stack.logs, exported), "seconds": 0.0}
            exported |= {str(f) for f in stack.logs.glob("*/part-*.parquet")}
            if day < a.days - 1:
                version = f"day{day + 1}"
                retrain = ["--version", version, "--data", str(stack.logs), "--init-from", str(serving_run),
                           *stack.instance(), "--gauc-margin", "0.02"]  # fmt: skip
                code = run_cmd([*stack.redeploy, *retrain], stack.log)
                report["retrain"] = "deployed" if code == 0 else "refused"
                if code == 0:
                    serving_run = stack.runs / version / "run"
            report["seconds"] = round(time.time() - t0, 1)
            days.append(report)
            print(
                f"day {day}: {report['model_version']}: CTR {report['ctr']:.4f} (oracle "
                f"{report['oracle_ctr']:.4f}, random {report['random_ctr']:.4f}; "
                f"{report['ctr'] / report['oracle_ctr']:.0%} of oracle), GAUC {report['gauc']:.3f}, "
                f"{report['impressions']} impressions; retrain: {report.get('retrain', '-')}",
                flush=True,
            )
            world.next_day()
        result = {"command": " ".join(["scripts/simulate.py", *(argv or sys.argv[1:])]), "machine": machine(),
                  "settings": {k: v for k, v in vars(a).items() if k not in ("json", "png", "work")},
                  "days": days}  # fmt: skip
        if ModelRepository(stack.repo).current() is None:
            raise SystemExit("nothing was ever deployed")
    write_json(a.json, result)
    if a.png:
        plot(days, a.png)
    if a.readme:
        replace_readme_block(a.readme, "simulate_explore" if a.explore else "simulate", table(result))
    return 0


def write_json(path: Path | None, result: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=str))


def table(result: dict[str, Any]) -> str:
    md = "| day | model | impressions | clicks | realized CTR | oracle CTR | random CTR | share of oracle "
    md += "| GAUC of the day's logs | retrain |\n" + "|---" * 10 + "|\n"
    md += "\n".join(
        f"| {d['day']} | {d['model_version']} | {d['impressions']} | {d['clicks']} | {d['ctr']:.4f} "
        f"| {d['oracle_ctr']:.4f} | {d['random_ctr']:.4f} | {d['ctr'] / d['oracle_ctr']:.0%} "
        f"| {d['gauc']:.3f} "
        f"| {d.get('retrain', '-')} |"
        for d in result["days"]
    )
    return md + f"\n\n`{result['command']}`; machine: {result['machine']}."


def plot(days: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    x = [d["day"] for d in days]
    for key, label in (("oracle_ctr", "oracle"), ("ctr", "served model"), ("random_ctr", "random")):
        ax1.plot(x, [d[key] for d in days], "o-", label=label)
    ax1.set(xlabel="day (retrained on its own logs after each)", ylabel="CTR", ylim=(0, None))
    ax1.legend(loc="center right")
    ax2.plot(x, [d["ctr"] / d["oracle_ctr"] for d in days], "o-", color="C1", label="served model")
    ax2.plot(x, [d["random_ctr"] / d["oracle_ctr"] for d in days], "o-", color="C2", label="random")
    ax2.set(xlabel="day", ylabel="share of the oracle's CTR", ylim=(0, 1))
    ax2.legend(loc="center right")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
