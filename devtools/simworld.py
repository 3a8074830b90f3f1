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
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from contracts.repository import ModelRepository
from devtools.liveserver import ROOT
from devtools.stack import RedisServer, Stack

ITEM_BASE = 10_000_000  # simulated item ids: none of them is a synthetic-generator id
CATEGORY_BASE = 900_000  # simulated category ids: none of them is one the cold model knows
USER_BASE = 5_000_000
ADMIN_TOKEN = "simulate-admin-token"
AGE_GROUPS = 4  # ages 18-57 in groups of ten years, sent through /profile


@dataclass
class World:
    """The ground truth. Each user has base interests over categories (rows sum to 1) and an age
    group whose taste tilts them (``profile_effect``: 0 none); each item a category and an appeal.
    Clicks follow a product of interest and appeal or a logistic of both (``click_model``), times
    a position factor (1 / rank) ** ``position_bias``. Every day interests drift and a share of the
    catalog is replaced by new items (``new_items``), new ids with new appeal."""

    interests: np.ndarray  # [U, C]
    group: np.ndarray  # [U] age group
    group_taste: np.ndarray  # [G, C]
    category: np.ndarray  # [I]
    appeal: np.ndarray  # [I]
    item_ids: np.ndarray  # [I] the ids the service sees
    rng: np.random.Generator
    drift: float
    click_model: str = "product"
    profile_effect: float = 0.0
    new_items: float = 0.0
    position_bias: float = 0.0
    history: list[list[int]] = field(default_factory=list)  # per user, the categories stored, oldest first
    next_id: int = 0
    day: int = 0
    # Added to the category ids the service sees: strangers to the cold model by default. The
    # online experiments set 0 (ids the cold model knows), so that their stable version already
    # ranks better than random and a canary has something to beat or lose to.
    category_base: int = CATEGORY_BASE
    born: np.ndarray = field(
        default_factory=lambda: np.zeros(0, dtype=np.int64)
    )  # [I] the day each item came

    def __post_init__(self) -> None:
        if len(self.born) != len(self.category):
            self.born = np.zeros(len(self.category), dtype=np.int64)

    @classmethod
    def make(
        cls,
        users: int,
        items: int,
        categories: int,
        drift: float,
        seed: int,
        click_model: str = "product",
        profile_effect: float = 0.0,
        new_items: float = 0.0,
        position_bias: float = 0.0,
    ) -> World:
        rng = np.random.default_rng(seed)
        interests = rng.dirichlet(np.full(categories, 0.3), users)
        group = np.arange(users) % 40 // 10  # the age sent is 18 + u % 40
        taste = rng.gamma(1.0, 1.0, (AGE_GROUPS, categories))
        taste /= taste.mean(1, keepdims=True)
        category, appeal = rng.integers(0, categories, items), rng.beta(2, 5, items)
        histories: list[list[int]] = [[] for _ in range(users)]
        ids = ITEM_BASE + np.arange(items)
        return cls(interests, group, taste, category, appeal, ids, rng, drift, click_model,
                   profile_effect, new_items, position_bias, histories, ITEM_BASE + items)  # fmt: skip

    def taste(self, user: int, interests: np.ndarray | None = None) -> np.ndarray:
        """The user's effective interests over categories: the base tilted by the age group's taste."""
        base = self.interests[user] if interests is None else interests
        tilted = base * self.group_taste[self.group[user]] ** self.profile_effect
        return tilted / tilted.sum()

    def p_click(self, user: int, items: np.ndarray, interests: np.ndarray | None = None) -> np.ndarray:
        """The click probability of each item shown in the first position (``interests``: a guess
        at the user's base interests instead of the truth)."""
        c = self.interests.shape[1]
        share = self.taste(user, interests)[self.category[items]] * c
        if self.click_model == "logistic":
            z = -2.2 + 1.2 * np.log(share + 1e-3) + 4 * (self.appeal[items] - 0.29)
            return 1 / (1 + np.exp(-z))
        return np.clip(share * 0.25 * self.appeal[items], 0, 0.95)

    def position(self, k: int) -> np.ndarray:
        """How much less the item in each of the first k positions is clicked than the first."""
        return (1.0 / np.arange(1, k + 1)) ** self.position_bias

    def next_day(self) -> None:
        """Interests drift: a small share of each user's taste is redrawn; new items replace old."""
        fresh = self.rng.dirichlet(np.full(self.interests.shape[1], 0.3), len(self.interests))
        self.interests = (1 - self.drift) * self.interests + self.drift * fresh
        self.day += 1
        n = round(self.new_items * len(self.category))
        if n:
            gone = self.rng.choice(len(self.category), n, replace=False)
            self.category[gone] = self.rng.integers(0, self.interests.shape[1], n)
            self.appeal[gone] = self.rng.beta(2, 5, n)
            self.item_ids[gone] = self.next_id + np.arange(n)
            self.born[gone] = self.day
            self.next_id += n


WORLDS: dict[str, dict[str, Any]] = {
    "drifting": {},  # the project's own: interests drift, clicks a product of interest and appeal
    "new-items": {"new_items": 0.1},  # 10% of the catalog is new every day
    "profiles": {"profile_effect": 1.0},  # the age group, sent as a profile, tilts interests
    "logistic": {"click_model": "logistic"},
    "position-bias": {"position_bias": 1.0},  # the k-th position is clicked 1/k as often
}


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
    return {"item_id": int(world.item_ids[j]), "category_id": world.category_base + int(world.category[j])}


def seed_users(client: Client, world: World, history: int) -> None:
    """Each user starts with a few behaviours drawn from their interests, and a profile."""
    for u in range(len(world.interests)):
        p = world.taste(u)[world.category] * world.appeal
        seen = world.rng.choice(len(p), history, replace=False, p=p / p.sum())
        events = [{"user_id": USER_BASE + u, **item(world, j)} for j in seen]
        client.post("/events", {"events": events})
        world.history[u] += [int(world.category[j]) for j in seen]
        profile = {"age": int(18 + u % 40), "gender": "F" if u % 2 else "M"}
        client.post("/profile", {"user_id": USER_BASE + u, "profile": profile})


@dataclass
class Visit:
    """One answer as the user saw it: the version that served it, the true click probability of
    the slate and of each shown item (position included), the clicks, the served CTRs, and the
    expected CTR of the slate's best ranking by the truth (the oracle), and by what the service
    could know (each item's appeal, the user's stored history and age group: the reachable bound)."""

    version: str
    slate_p: np.ndarray
    shown_p: np.ndarray
    clicks: int
    served_ctr: np.ndarray = field(default_factory=lambda: np.zeros(0))
    oracle: float = 0.0
    reachable: float = 0.0
    random: float = 0.0
    others: dict[str, float] = field(default_factory=dict)  # more rankings' expected CTR on the slate
    new_shown: int = 0  # items shown that came today (no model has seen them)
    new_clicks: int = 0
    new_in_oracle: int = 0  # of the oracle's top k


def guess_interests(world: World, user: int, cap: int) -> np.ndarray:
    """The posterior mean of the user's base interests under the world's Dirichlet prior, from the
    categories of their newest ``cap`` stored behaviours."""
    c = world.interests.shape[1]
    counts = np.bincount(np.array(world.history[user][-cap:], dtype=np.int64), minlength=c)
    return (0.3 + counts) / (0.3 * c + counts.sum())


def expected_ctr(world: World, p: np.ndarray, order: np.ndarray, k: int) -> float:
    """The expected CTR of showing the items ``order[:k]`` (``p`` their first-position probabilities)."""
    return float((p[order[:k]] * world.position(k)[: len(order[:k])]).mean())


def visit(
    client: Client,
    world: World,
    u: int,
    slate: int,
    k: int,
    context: dict[str, int] | None = None,
    cap: int = 50,
    others: dict[str, Callable[[np.ndarray], np.ndarray | None]] | None = None,
) -> Visit:
    """One visit of user ``u``. ``others``: more rankings of the same slate to score by the truth
    (each takes the slate's item indices and gives an order, or None), before the user clicks."""
    cands = world.rng.choice(len(world.category), slate, replace=False)
    p = world.p_click(u, cands)
    reachable = world.p_click(u, cands, guess_interests(world, u, cap))
    more = {}
    for name, rank in (others or {}).items():
        order = rank(cands)
        if order is not None:
            more[name] = expected_ctr(world, p, order, k)
    candidates = [item(world, j) for j in cands]
    body: dict[str, Any] = {"user_id": USER_BASE + int(u), "candidates": candidates, "top_k": k}
    if context is not None:
        body["context"] = context
    answer = client.post("/score", body)
    index = {int(world.item_ids[j]): n for n, j in enumerate(cands)}
    positions = world.position(k)
    shown = np.array([p[index[it["item_id"]]] for it in answer["items"]]) * positions[: len(answer["items"])]
    clicks = new_shown = new_clicks = 0
    for it, p_item in zip(answer["items"], shown, strict=True):
        new = world.day > 0 and world.born[cands[index[it["item_id"]]]] == world.day
        new_shown += new
        if world.rng.random() < p_item:
            clicks += 1
            new_clicks += new
            event = {"user_id": USER_BASE + int(u), "item_id": it["item_id"],
                     "category_id": it["category_id"], "request_id": answer["request_id"]}  # fmt: skip
            client.post("/events", {"events": [event]})
            world.history[u].append(it["category_id"] - world.category_base)
    return Visit(
        answer["model_version"], p, shown, clicks, np.array([it["ctr"] for it in answer["items"]]),
        expected_ctr(world, p, np.argsort(-p), k), expected_ctr(world, p, np.argsort(-reachable), k),
        float(p.mean() * positions.mean()), more, new_shown, new_clicks,
        int((world.born[cands[np.argsort(-p)[:k]]] == world.day).sum()) if world.day > 0 else 0,
    )  # fmt: skip


def run_cmd(cmd: list[str], log: Path) -> int:
    with open(log, "a") as f:
        f.write(f"\n$ {' '.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT).returncode


def add_world_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--world",
        choices=sorted(WORLDS),
        default="drifting",
        help="the family member: drifting interests (the default), new-items, profiles, logistic clicks, "
        "position-bias",
    )
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

    def __init__(self, work: Path, a: argparse.Namespace, strangers: bool = True):
        """``strangers``: the world's category ids are ones the cold model never saw."""
        self.work, self.a = work, a
        self.log, self.repo, self.logs, self.runs = (
            work / "simulate.log",
            work / "models",
            work / "logs",
            work / "runs",
        )
        self.world = World.make(a.users, a.items, a.categories, a.drift, a.seed, **WORLDS[a.world])
        self.world.category_base = CATEGORY_BASE if strangers else 0
        py = sys.executable
        # The README's redeploy, on this stack: the loop's retrains add only --data, --init-from
        # serving and --version. The cold model of day 0 and the experiments' canaries add the
        # training options below (``train``).
        self.redeploy = [py, "scripts/redeploy.py", "--models", str(self.repo), "--work", str(self.runs),
                         "--nice", "0"]  # fmt: skip
        self.train = ["--max-history", "50", "--epochs", str(a.epochs), "--lr", str(a.lr),
                      "--batch-size", str(a.batch_size)]  # fmt: skip

    def __enter__(self) -> Simulation:
        self.work.mkdir(parents=True, exist_ok=True)
        print(f"training the cold model on the synthetic generator (log: {self.log})", flush=True)
        if run_cmd([*self.redeploy, *self.train, "--version", "day0", "--data", "synthetic"], self.log):
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
