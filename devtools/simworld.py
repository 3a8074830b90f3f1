"""The simulated world and the stack it runs on, shared by the closed loop (scripts/simulate.py)
and its online experiments (devtools/simulated_canary.py).

Users have hidden interests over item categories and a ground-truth click probability for every
(user, item): their interest in the item's category times the item's appeal. A visit asks the real
service (uvicorn on its own Redis, as users run it) to rank a random slate of candidates; the user
sees the top k and clicks by the ground truth, and clicks go to /events with the answer's
request_id.
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from contracts.repository import ModelRepository
from devtools.liveserver import ROOT
from devtools.stack import RedisServer, Stack

ITEM_BASE = 10_000_000  # simulated item ids: none of them is a synthetic-generator id
USER_BASE = 5_000_000
ADMIN_TOKEN = "simulate-admin-token"


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


@dataclass
class Visit:
    """One answer as the user saw it: the version that served it, the true click probability of
    the slate and of each shown item, and the clicks."""

    version: str
    slate_p: np.ndarray
    shown_p: np.ndarray
    clicks: int


def visit(client: Client, world: World, u: int, slate: int, k: int) -> Visit:
    cands = world.rng.choice(len(world.category), slate, replace=False)
    p = world.p_click(u, cands)
    body = {"user_id": USER_BASE + int(u), "candidates": [item(world, j) for j in cands], "top_k": k}
    answer = client.post("/score", body)
    index = {ITEM_BASE + int(j): n for n, j in enumerate(cands)}
    shown = np.array([p[index[it["item_id"]]] for it in answer["items"]])
    clicks = 0
    for it, p_item in zip(answer["items"], shown, strict=True):
        if world.rng.random() < p_item:
            clicks += 1
            event = {"user_id": USER_BASE + int(u), "item_id": it["item_id"],
                     "category_id": it["category_id"], "request_id": answer["request_id"]}  # fmt: skip
            client.post("/events", {"events": [event]})
    return Visit(answer["model_version"], p, shown, clicks)


def run_cmd(cmd: list[str], log: Path) -> int:
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode


def add_world_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--users", type=int, default=400)
    p.add_argument("--items", type=int, default=600)
    p.add_argument("--categories", type=int, default=20)
    p.add_argument("--visits", type=int, default=8, help="visits per user per day")
    p.add_argument("--slate", type=int, default=40, help="candidates scored per visit")
    p.add_argument("--k", type=int, default=5, help="items shown per visit")
    p.add_argument("--drift", type=float, default=0.05, help="share of each user's interests redrawn daily")
    p.add_argument("--epochs", type=int, default=10, help="per retrain (an upper bound: early stopping)")
    # A day's log is small (16,000 impressions by default): more, smaller steps than model.train's
    # defaults, or the retrains end far from what the logs can teach.
    p.add_argument("--lr", type=float, default=3e-3, help="per retrain")
    p.add_argument("--batch-size", type=int, default=128, help="per retrain")
    p.add_argument("--explore", type=float, default=0.0, help="the service's DIN_EXPLORE_SHARE")
    p.add_argument("--seed", type=int, default=0)


def check_world_args(p: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if min(a.users, a.items, a.categories, a.visits, a.k, a.epochs, a.batch_size) < 1 or a.slate < a.k:
        p.error("counts must be >= 1 and --slate >= --k")
    if not 0 <= a.explore <= 0.5:
        p.error("--explore must be between 0 and 0.5")
    if a.lr <= 0:
        p.error("--lr must be > 0")
    if a.slate > a.items:
        p.error("--slate must not exceed --items")


class Simulation:
    """The cold model (trained on the synthetic generator, which shares no item or user with the
    simulated world) deployed as ``day0``, a Redis and the service (a ``devtools.stack.Stack``), and
    the seeded users. ``redeploy`` is scripts/redeploy.py with this stack's repository and training
    options."""

    def __init__(self, work: Path, a: argparse.Namespace):
        self.work, self.a = work, a
        self.log, self.repo, self.logs, self.runs = (
            work / "simulate.log",
            work / "models",
            work / "logs",
            work / "runs",
        )
        self.world = World.make(a.users, a.items, a.categories, a.drift, a.seed)
        py = sys.executable
        self.redeploy = [py, "scripts/redeploy.py", "--models", str(self.repo), "--work", str(self.runs),
                         "--nice", "0", "--max-history", "50", "--epochs", str(a.epochs), "--lr", str(a.lr),
                         "--batch-size", str(a.batch_size)]  # fmt: skip

    def __enter__(self) -> Simulation:
        self.work.mkdir(parents=True, exist_ok=True)
        print(f"training the cold model on the synthetic generator (log: {self.log})", flush=True)
        if run_cmd([*self.redeploy, "--version", "day0", "--data", "synthetic"], self.log):
            raise SystemExit(f"the cold model failed to train; see {self.log}")
        self.redis = RedisServer(self.work)
        self.redis.start()
        self.stack = Stack(ModelRepository(self.repo), self.redis.url, "din:", ADMIN_TOKEN)
        self.serving = ExitStack()
        try:
            settings = {"model_poll_seconds": 0.5, "history_cap": 50, "explore_share": self.a.explore}
            self.url = self.serving.enter_context(self.stack.serve(**settings)).url
        except BaseException:
            self.redis.kill()
            raise
        self.client = Client(self.url)
        seed_users(self.client, self.world, history=5)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.client.close()
        self.serving.close()
        self.redis.kill()

    def instance(self) -> list[str]:
        """The redeploy and experiment options that roll a pointer flip out to this service."""
        return ["--instance", self.url, "--admin-token", ADMIN_TOKEN]

    def export(self) -> None:
        """``python -m jobs.feedback export`` of everything served so far (no label wait: the
        simulated users click at once)."""
        time.sleep(1)  # the service flushes its impression log in the background
        cmd = [sys.executable, "-m", "jobs.feedback", "export", "--redis-url", self.redis.url,
               "--out", str(self.logs), "--label-window-seconds", "0"]  # fmt: skip
        if run_cmd(cmd, self.log):
            raise SystemExit(f"export failed; see {self.log}")
