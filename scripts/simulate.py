"""A closed loop: simulated users on the real service, learning from its own logs, day after day.

    python scripts/simulate.py --json runs/simulate.json --png runs/simulate.png
    python scripts/simulate.py --quick      # a small version (the test runs it)

Users have hidden interests over item categories that drift a little every day, and a ground-truth
click probability for every (user, item): their interest in the item's category times the item's
appeal. Each day every user visits a few times; the real service (uvicorn on its own Redis, as
users run it) ranks a random slate of candidates, the user sees the top k and clicks by the ground
truth, and clicks go to /events with the answer's request_id. At the day's end the loop runs, as a
user would: ``python -m model.feedback export`` into one folder, then ``scripts/redeploy.py --data
FOLDER --init-from <the serving run>``, which trains on the logs split by time, gates on the newest
slice and rolls the new version out. Day 0 serves a cold model trained on the synthetic generator,
whose items and users share nothing with the simulated ones.

Each day reports the served model's realized CTR, the oracle's expected CTR (the top k by the true
probability, on the same slates), random ranking's expected CTR, and the GAUC of the day's logs.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from benchutil import machine, replace_readme_block
from harness import RedisServer
from liveserver import ROOT, start_server, stop_server
from model.metrics import gauc
from model.repository import ModelRepository

ITEM_BASE = 10_000_000  # simulated item ids: none of them is a synthetic-generator id
USER_BASE = 5_000_000


@dataclass
class World:
    """The ground truth: interests [U, C] (rows sum to 1), item category [I], item appeal [I]."""

    interests: np.ndarray
    category: np.ndarray
    appeal: np.ndarray
    rng: np.random.Generator
    drift: float

    @classmethod
    def make(cls, users: int, items: int, categories: int, drift: float, seed: int) -> World:
        rng = np.random.default_rng(seed)
        interests = rng.dirichlet(np.full(categories, 0.3), users)
        return cls(interests, rng.integers(0, categories, items), rng.beta(2, 5, items), rng, drift)

    def p_click(self, user: int, items: np.ndarray) -> np.ndarray:
        c = self.interests.shape[1]
        return np.clip(self.interests[user, self.category[items]] * c * 0.25 * self.appeal[items], 0, 0.95)

    def next_day(self) -> None:
        """Interests drift: a small share of each user's taste is redrawn."""
        fresh = self.rng.dirichlet(np.full(self.interests.shape[1], 0.3), len(self.interests))
        self.interests = (1 - self.drift) * self.interests + self.drift * fresh


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


class Client:
    """One keep-alive connection to the service."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def close(self) -> None:
        self.conn.close()

    def post(self, path: str, body: Any) -> Any:
        try:
            self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            r = self.conn.getresponse()
        except (ConnectionError, http.client.HTTPException):  # the server closed an idle connection
            self.conn.close()
            self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
            r = self.conn.getresponse()
        data = r.read()
        if r.status not in (200, 204):
            raise RuntimeError(f"{path}: {r.status} {data[:300]!r}")
        return json.loads(data) if data else None


def item(world: World, j: int) -> dict[str, int]:
    return {"item_id": ITEM_BASE + int(j), "category_id": int(world.category[j])}


def seed_users(client: Client, world: World, history: int) -> None:
    """Each user starts with a few behaviours drawn from their interests, and a profile."""
    for u in range(len(world.interests)):
        p = world.interests[u, world.category] * world.appeal
        seen = world.rng.choice(len(p), history, replace=False, p=p / p.sum())
        events = [{"user_id": USER_BASE + u, **item(world, j)} for j in seen]
        client.post("/events", {"events": events})
        profile = {"age": int(18 + u % 40), "gender": "F" if u % 2 else "M"}
        client.post("/profile", {"user_id": USER_BASE + u, "profile": profile})


def serve_day(client: Client, world: World, visits: int, slate: int, k: int) -> dict[str, Any]:
    shown = clicks = 0
    oracle, random_ = [], []
    version = None
    for _ in range(visits):
        for u in world.rng.permutation(len(world.interests)):
            cands = world.rng.choice(len(world.category), slate, replace=False)
            p = world.p_click(u, cands)
            body = {"user_id": USER_BASE + int(u), "candidates": [item(world, j) for j in cands], "top_k": k}
            answer = client.post("/score", body)
            version = answer["model_version"]
            index = {ITEM_BASE + int(j): n for n, j in enumerate(cands)}
            for it in answer["items"]:
                shown += 1
                if world.rng.random() < p[index[it["item_id"]]]:
                    clicks += 1
                    event = {"user_id": USER_BASE + int(u), "item_id": it["item_id"],
                             "category_id": it["category_id"],
                             "request_id": answer["request_id"]}  # fmt: skip
                    client.post("/events", {"events": [event]})
            oracle.append(np.sort(p)[::-1][:k].mean())
            random_.append(p.mean())
    return {"model_version": version, "impressions": shown, "clicks": clicks, "ctr": clicks / max(shown, 1),
            "oracle_ctr": float(np.mean(oracle)), "random_ctr": float(np.mean(random_))}  # fmt: skip


def run_cmd(cmd: list[str], log: Path) -> int:
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode


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
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--items", type=int, default=600)
    p.add_argument("--categories", type=int, default=20)
    p.add_argument("--visits", type=int, default=8, help="visits per user per day")
    p.add_argument("--slate", type=int, default=40, help="candidates scored per visit")
    p.add_argument("--k", type=int, default=5, help="items shown per visit")
    p.add_argument("--drift", type=float, default=0.05, help="share of each user's interests redrawn daily")
    p.add_argument("--epochs", type=int, default=10, help="per retrain (an upper bound: early stopping)")
    # A day's log is small (16,000 impressions by default): more, smaller steps than model.train's
    # defaults, or the five retrains end far from what the logs can teach.
    p.add_argument("--lr", type=float, default=3e-3, help="per retrain")
    p.add_argument("--batch-size", type=int, default=128, help="per retrain")
    p.add_argument("--explore", type=float, default=0.0, help="the service's DIN_EXPLORE_SHARE")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="3 days, 150 users, 2 visits")
    p.add_argument(
        "--bound", action="store_true", help="print what a ranking from the history alone can reach, and stop"
    )
    p.add_argument("--work", type=Path, help="keep everything here (default: a temporary folder)")
    p.add_argument("--json", type=Path)
    p.add_argument("--png", type=Path)
    p.add_argument(
        "--readme",
        type=Path,
        help="replace this file's simulate block (simulate_explore with --explore) with the days' table",
    )
    a = p.parse_args(argv)
    if a.quick:
        a.days, a.users, a.visits, a.epochs = 3, 150, 2, 2
    if (
        min(a.days, a.users, a.items, a.categories, a.visits, a.k, a.epochs, a.batch_size) < 1
        or a.slate < a.k
    ):
        p.error("counts must be >= 1 and --slate >= --k")
    if not 0 <= a.explore <= 0.5:
        p.error("--explore must be between 0 and 0.5")
    if a.lr <= 0:
        p.error("--lr must be > 0")
    if a.slate > a.items:
        p.error("--slate must not exceed --items")

    if a.bound:
        world = World.make(a.users, a.items, a.categories, a.drift, a.seed)
        for length, share in history_bound(world, [5, 10, 20, 40], a.k, a.slate).items():
            print(f"{length} behaviours per user: {share:.0%} of the oracle's CTR")
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        work = a.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        log = work / "simulate.log"
        repo, logs, runs = work / "models", work / "logs", work / "runs"
        py = sys.executable
        print(f"training the cold model on the synthetic generator (log: {log})", flush=True)
        redeploy = [py, "scripts/redeploy.py", "--models", str(repo), "--work", str(runs), "--nice", "0",
                    "--max-history", "50", "--epochs", str(a.epochs), "--lr", str(a.lr),
                    "--batch-size", str(a.batch_size)]  # fmt: skip
        if run_cmd([*redeploy, "--version", "day0", "--data", "synthetic"], log):
            raise SystemExit(f"the cold model failed to train; see {log}")
        redis = RedisServer(work)
        redis.start()
        env = os.environ | {"DIN_MODELS": str(repo), "DIN_REDIS_URL": redis.url,
                            "DIN_MODEL_POLL_SECONDS": "0.5", "DIN_ADMIN_TOKEN": "simulate-admin-token",
                            "DIN_HISTORY_CAP": "50", "DIN_EXPLORE_SHARE": str(a.explore)}  # fmt: skip
        server, url = start_server(env)
        world = World.make(a.users, a.items, a.categories, a.drift, a.seed)
        days: list[dict[str, Any]] = []
        client = Client(url)
        try:
            seed_users(client, world, history=5)
            serving_run = runs / "day0" / "run"
            exported: set[str] = set()
            for day in range(a.days):
                t0 = time.time()
                report = serve_day(client, world, a.visits, a.slate, a.k)
                export = [py, "-m", "model.feedback", "export", "--redis-url", redis.url, "--out", str(logs),
                          "--label-window-seconds", "0"]  # fmt: skip
                time.sleep(1)  # the service flushes its impression log in the background
                if run_cmd(export, log):
                    raise SystemExit(f"export failed; see {log}")
                report |= {"day": day, "gauc": day_gauc(logs, exported), "seconds": 0.0}
                exported |= {str(f) for f in logs.glob("*/part-*.parquet")}
                if day < a.days - 1:
                    version = f"day{day + 1}"
                    retrain = ["--version", version, "--data", str(logs), "--init-from", str(serving_run),
                               "--instance", url, "--admin-token", env["DIN_ADMIN_TOKEN"],
                               "--gauc-margin", "0.02"]  # fmt: skip
                    code = run_cmd([*redeploy, *retrain], log)
                    report["retrain"] = "deployed" if code == 0 else "refused"
                    if code == 0:
                        serving_run = runs / version / "run"
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
        finally:
            client.close()
            stop_server(server)
            redis.kill()
        result = {"command": " ".join(["scripts/simulate.py", *(argv or sys.argv[1:])]), "machine": machine(),
                  "settings": {k: v for k, v in vars(a).items() if k not in ("json", "png", "work")},
                  "days": days}  # fmt: skip
        if ModelRepository(repo).current() is None:
            raise SystemExit("nothing was ever deployed")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=1, default=str))
    if a.png:
        plot(days, a.png)
    if a.readme:
        replace_readme_block(a.readme, "simulate_explore" if a.explore else "simulate", table(result))
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
