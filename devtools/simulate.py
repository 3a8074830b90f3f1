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
from collections.abc import Callable
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
from devtools.simworld import (
    Client,
    Simulation,
    World,
    add_world_args,
    check_world_args,
    expected_ctr,
    run_cmd,
    visit,
)
from devtools.yardstick import Yardstick
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
            p = world.taste(u)[world.category] * world.appeal
            seen = rng.choice(len(p), length, p=p / p.sum())
            guess = (0.3 + np.bincount(world.category[seen], minlength=c)) / (0.3 * c + length)
            for _ in range(visits):
                cands = rng.choice(len(world.category), slate, replace=False)
                truth = world.p_click(u, cands)
                got.append(expected_ctr(world, truth, np.argsort(-world.p_click(u, cands, guess)), k))
                best.append(expected_ctr(world, truth, np.argsort(-truth), k))
        out[length] = float(np.mean(got) / np.mean(best))
    return out


def serve_day(
    client: Client, world: World, day: int, visits: int, slate: int, k: int, yardstick: Yardstick
) -> dict[str, Any]:
    """One simulated day: every user visits ``visits`` times, in random order, while the simulated
    clock walks through the day's 24 hours; each request carries the simulated hour and weekday as
    its context. Besides the served model's realized CTR: the mean CTR it served for what it showed
    (calibration), the expected CTR of the oracle, of the reachable ranking (each item's appeal
    known, the user's interests read from the stored history and the age group), of random
    ranking, and of the yardstick regression, all on the same slates."""
    shown = clicks = new_shown = new_clicks = new_in_oracle = 0
    served: list[float] = []
    sums: dict[str, list[float]] = {"oracle": [], "reachable": [], "random": [], "yardstick": []}
    version = None
    order = [int(u) for _ in range(visits) for u in world.rng.permutation(len(world.interests))]

    def by_yardstick(u: int) -> Callable[[np.ndarray], np.ndarray | None]:
        base = world.category_base
        history = [base + c for c in world.history[u][-50:]]
        return lambda cands: yardstick.order(
            [int(world.item_ids[j]) for j in cands], [base + int(world.category[j]) for j in cands],
            18 + u % 40, history,
        )  # fmt: skip

    for n, u in enumerate(order):
        context = {"hour": 24 * n // len(order), "weekday": day % 7}
        v = visit(client, world, u, slate, k, context, others={"yardstick": by_yardstick(u)})
        version, shown, clicks = v.version, shown + len(v.shown_p), clicks + v.clicks
        new_shown, new_clicks, new_in_oracle = (
            new_shown + v.new_shown,
            new_clicks + v.new_clicks,
            new_in_oracle + v.new_in_oracle,
        )
        served += v.served_ctr.tolist()
        for name, value in (("oracle", v.oracle), ("reachable", v.reachable), ("random", v.random)):
            sums[name].append(value)
        if "yardstick" in v.others:
            sums["yardstick"].append(v.others["yardstick"])
    ctr, served_ctr = clicks / max(shown, 1), float(np.mean(served))
    means = {f"{name}_ctr": float(np.mean(values)) for name, values in sums.items() if values}
    calibration = served_ctr / ctr if ctr else float("inf")
    report = {"model_version": version, "impressions": shown, "clicks": clicks, "ctr": ctr,
              "served_ctr": served_ctr, "calibration": calibration, **means}  # fmt: skip
    if world.new_items and day > 0:  # today's new items: the share of what was shown, and of the oracle's
        oracle_share = new_in_oracle / (k * len(order))
        report |= {"new_item_share": new_shown / max(shown, 1), "new_item_share_oracle": oracle_share,
                   "new_item_ctr": new_clicks / max(new_shown, 1)}  # fmt: skip
    return report


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
    p.add_argument(
        "--table-from",
        type=Path,
        metavar="JSON",
        help="write --readme's block (and --png's chart) from a saved --json result, and stop",
    )
    add_experiment_args(p)
    a = p.parse_args(argv)
    if a.table_from:
        if not a.readme:
            p.error("--table-from writes the --readme block: give --readme")
        result = json.loads(a.table_from.read_text())
        world = result.get("settings", {}).get("world", "drifting")
        replace_readme_block(a.readme, f"simulate_{world}", table(result))
        if a.png:
            plot(result["days"], a.png)
        return 0
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
        # The experiments test the canary machinery: a world the cold model knows the categories of,
        # so the stable version already ranks better than random.
        with (
            tempfile.TemporaryDirectory() as tmp,
            Simulation(a.work or Path(tmp), a, strangers=False) as stack,
        ):
            result = {"command": " ".join(["scripts/simulate.py", *(argv or sys.argv[1:])]),
                      "machine": machine(), **run_experiments(stack, a)}  # fmt: skip
        write_json(a.json, result)
        if a.readme:
            replace_readme_block(a.readme, f"experiments_{'_'.join(a.experiment)}", experiments_table(result))
        return 0
    with tempfile.TemporaryDirectory() as tmp, Simulation(a.work or Path(tmp), a) as stack:
        world, days = stack.world, []
        exported: set[str] = set()
        yardstick = Yardstick()
        for day in range(a.days):
            t0 = time.time()
            report = serve_day(stack.client, world, day, a.visits, a.slate, a.k, yardstick)
            stack.export()
            report |= {"day": day, "gauc": day_gauc(stack.logs, exported), "seconds": 0.0}
            exported |= {str(f) for f in stack.logs.glob("*/part-*.parquet")}
            if day < a.days - 1:
                # The README's command, with its defaults: what a user runs every day.
                retrain = ["--version", f"day{day + 1}", "--data", str(stack.logs), "--init-from", "serving"]
                code = run_cmd([*stack.redeploy, *retrain, *stack.instance()], stack.log)
                report["retrain"] = "deployed" if code == 0 else "refused"
                yardstick.fit(stack.logs)
            report["seconds"] = round(time.time() - t0, 1)
            days.append(report)
            print(describe(report), flush=True)
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
        replace_readme_block(
            a.readme, "simulate_explore" if a.explore else f"simulate_{a.world}", table(result)
        )
    return 0


def describe(d: dict[str, Any]) -> str:
    yardstick = f", yardstick {d['yardstick_ctr'] / d['oracle_ctr']:.0%}" if "yardstick_ctr" in d else ""
    if "new_item_share" in d:
        yardstick += (
            f"; today's new items {d['new_item_share']:.1%} of what was shown (the oracle's "
            f"{d['new_item_share_oracle']:.1%}), their CTR {d['new_item_ctr']:.3f}"
        )
    return (
        f"day {d['day']}: {d['model_version']}: CTR {d['ctr']:.4f} ({d['ctr'] / d['oracle_ctr']:.0%} of the "
        f"oracle's {d['oracle_ctr']:.4f}, {d['ctr'] / d['reachable_ctr']:.0%} of the reachable "
        f"{d['reachable_ctr']:.4f}; random {d['random_ctr'] / d['oracle_ctr']:.0%}{yardstick}), served CTR "
        f"{d['served_ctr']:.4f} ({d['calibration']:.2f}x realized), GAUC {d['gauc']:.3f}, {d['impressions']} "
        f"impressions; retrain: {d.get('retrain', '-')}"
    )


def write_json(path: Path | None, result: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=1, default=str))


def table(result: dict[str, Any]) -> str:
    md = "| day | model | realized CTR | share of the oracle | share of the reachable "
    md += "| yardstick, share of the oracle | served / realized CTR | random, share of the oracle "
    new_items = any("new_item_share" in d for d in result["days"])
    md += "| GAUC of the day's logs | retrain |" + (
        " new items shown (the oracle's share) |" if new_items else ""
    )
    md += "\n" + "|---" * (11 if new_items else 10) + "|\n"
    for d in result["days"]:
        yardstick = f"{d['yardstick_ctr'] / d['oracle_ctr']:.0%}" if "yardstick_ctr" in d else "-"
        md += (
            f"| {d['day']} | {d['model_version']} | {d['ctr']:.4f} | {d['ctr'] / d['oracle_ctr']:.0%} "
            f"| {d['ctr'] / d['reachable_ctr']:.0%} | {yardstick} | {d['calibration']:.2f} "
            f"| {d['random_ctr'] / d['oracle_ctr']:.0%} | {d['gauc']:.3f} | {d.get('retrain', '-')} |"
        )
        if new_items:
            share = (
                f"{d['new_item_share']:.1%} ({d['new_item_share_oracle']:.1%})"
                if "new_item_share" in d
                else "-"
            )
            md += f" {share} |"
        md += "\n"
    return md + f"\n`{result['command']}`; machine: {result['machine']}."


def plot(days: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    x = [d["day"] for d in days]
    series = (("oracle_ctr", "oracle"), ("reachable_ctr", "reachable"), ("ctr", "served model"),
              ("yardstick_ctr", "yardstick"), ("random_ctr", "random"))  # fmt: skip
    for key, label in series:
        known = [(d["day"], d[key]) for d in days if d.get(key) is not None]
        if known:
            ax1.plot(*zip(*known, strict=True), "o-", label=label)
    top = max(d["oracle_ctr"] for d in days)
    ax1.set(xlabel="day (retrained on its own logs after each)", ylabel="CTR", ylim=(0, top * 1.35))
    ax1.legend(loc="upper center", ncol=3, fontsize="small")
    ax2.plot(x, [d["ctr"] / d["oracle_ctr"] for d in days], "o-", color="C2", label="served model")
    yardstick = [(d["day"], d["yardstick_ctr"] / d["oracle_ctr"]) for d in days if d.get("yardstick_ctr")]
    if yardstick:
        ax2.plot(*zip(*yardstick, strict=True), "o-", color="C3", label="yardstick")
    ax2.plot(x, [d["random_ctr"] / d["oracle_ctr"] for d in days], "o-", color="C4", label="random")
    ax2.set(xlabel="day", ylabel="share of the oracle's CTR", ylim=(0, 1.15))
    ax2.legend(loc="upper center", ncol=3, fontsize="small")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
