"""A canary experiment, measured from the service's own logs and decided by a sequential test.

    python scripts/experiment.py status                  # per arm: impressions, clicks, CTR; the lift
    python scripts/experiment.py status --auto           # look every --interval s; promote or abort
    python scripts/experiment.py promote | abort         # by hand

``scripts/redeploy.py --canary P`` starts an experiment (``contracts.canary``). The numbers come from
the impression and click streams every instance writes to Redis (``contracts.keys``), so they cover
all instances and workers: impressions after the experiment started, served by the version of the
user's arm, and the clicks attributed to them as the exporter attributes them
(``jobs.feedback.attribute``). The test is ``jobs.sequential``. In shadow mode the canary is never
served, so there is no realized CTR to test; status compares the two versions' predictions on the
same served impressions (logloss, AUC, GAUC against the clicks).

Promote and abort are pointer flips (``contracts.repository``), rolled out and verified on every
``--instance`` as scripts/redeploy.py does. Exit code 0: done (status printed, or the decision
carried out); 1: an error; 2 (``--auto``): stopped by ``--timeout`` without a decision.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import redis

from contracts.canary import Canary
from contracts.cli import Parser
from contracts.keys import Keys, decode_feedback
from contracts.redis_client import SyncClient, keys_for, sync_client
from contracts.repository import ModelRepository, Pointer, RepositoryError
from contracts.settings import tools
from jobs.feedback import DEFAULT_WINDOW_SECONDS, attribute, id_key
from jobs.redeploy import DeployError, add_rollout_args, roll_out
from jobs.sequential import Comparison, SequentialTest, arm_stats
from model.evaluation import auc, gauc, logloss

READ_COUNT = 5000


def start_id(canary: Canary) -> str:
    """The stream id of the experiment's start: entries at or after it belong to it."""
    ms = int(datetime.fromisoformat(canary.started_at).timestamp() * 1000) if canary.started_at else 0
    return f"{ms}-0"


@dataclass
class StreamLog:
    """The records of one stream (all its shard keys) since the experiment started, read
    incrementally, each kept with only what attribution and counting need, in time order."""

    client: SyncClient
    keys: tuple[str, ...]
    first: str
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    last: dict[str, str] = field(default_factory=dict)  # per key, after the first entry read

    def update(self) -> None:
        new: list[tuple[str, dict[str, Any]]] = []
        for key in self.keys:
            while True:
                start = f"({self.last[key]}" if key in self.last else self.first
                reply: Any = self.client.xrange(key, start, "+", READ_COUNT)
                for entry_id, fields in reply:
                    self.last[key] = entry_id.decode()
                    try:
                        record = decode_feedback(fields[b"r"])
                    except (KeyError, ValueError):
                        continue  # an entry this code does not read is not part of the experiment
                    new.append((self.last[key], _slim(record)))
                if len(reply) < READ_COUNT:
                    break
        new.sort(key=lambda e: id_key(e[0]))
        self.records += new


def _slim(record: dict[str, Any]) -> dict[str, Any]:
    keep = ("request_id", "user_id", "ts", "at", "item_id", "model_version", "ctr", "served_ctr")
    out = {k: record[k] for k in keep if k in record}
    if "candidates" in record:
        out["candidates"] = [{"item_id": c.get("item_id")} for c in record["candidates"]]
    return out


class Experiment:
    """The running experiment's data, refreshed by ``update`` (only new stream entries are read)."""

    def __init__(
        self, client: SyncClient, keys: Keys, pointer: Pointer, window: float = DEFAULT_WINDOW_SECONDS
    ):
        if pointer.canary is None:
            raise RepositoryError("no canary is running: start one with scripts/redeploy.py --canary P")
        self.stable, self.canary, self.window = pointer.version, pointer.canary, window
        first = start_id(self.canary)
        served = keys.shadow() if self.canary.mode == "shadow" else keys.impressions()
        self.answers = StreamLog(client, served, first)
        self.clicks = StreamLog(client, keys.clicks(), first)

    def update(self) -> None:
        self.answers.update()
        self.clicks.update()

    def per_user(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Arm ("stable" / "canary") -> per-user impressions and clicks. A user counts in the arm
        their hash puts them in, with the answers the arm's version served them (an answer from an
        instance that had not loaded the canary yet is left out)."""
        answers = self.answers.records
        clicked = attribute(answers, self.clicks.records, self.window)
        clicks_at: dict[int, int] = defaultdict(int)
        for a, _ in clicked:
            clicks_at[a] += 1
        counts: dict[str, dict[Any, list[int]]] = {"stable": {}, "canary": {}}
        for a, (_, rec) in enumerate(answers):
            arm = "canary" if self.canary.takes(rec["user_id"]) else "stable"
            if rec["model_version"] != (self.canary.version if arm == "canary" else self.stable):
                continue
            user = counts[arm].setdefault(json.dumps(rec["user_id"]), [0, 0])
            user[0] += len(rec["candidates"])
            user[1] += clicks_at.get(a, 0)
        out = {}
        for arm, users in counts.items():
            values = np.array(list(users.values()), dtype=np.int64).reshape(-1, 2)
            out[arm] = (values[:, 0], values[:, 1])
        return out

    def compare(self, test: SequentialTest, previous_p: float = 1.0) -> Comparison:
        arms = self.per_user()
        return test.compare(arm_stats(*arms["stable"]), arm_stats(*arms["canary"]), previous_p)

    def shadow_scores(self) -> dict[str, Any]:
        """Both versions' predictions on the same served impressions, scored against the clicks."""
        answers = self.answers.records
        clicked = attribute(answers, self.clicks.records, self.window)
        users, labels, served, shadow = [], [], [], []
        for a, (_, rec) in enumerate(answers):
            for j in range(len(rec["candidates"])):
                users.append(json.dumps(rec["user_id"]))
                labels.append(int((a, j) in clicked))
                served.append(rec["served_ctr"][j])
                shadow.append(rec["ctr"][j])
        y = np.array(labels, dtype=np.float64)
        _, user_index = np.unique(np.array(users, dtype=object).astype(str), return_inverse=True)
        out: dict[str, Any] = {"impressions": len(labels), "clicks": int(y.sum())}
        for name, scores in (("stable", served), ("canary", shadow)):
            p = np.array(scores, dtype=np.float64)
            enough = 0 < y.sum() < len(y)
            out[name] = {
                "logloss": logloss(y, p) if len(y) else math.nan,
                "auc": auc(y, p) if enough else math.nan,
                "gauc": gauc(user_index, y, p) if enough else math.nan,
                "mean_ctr": float(p.mean()) if len(p) else math.nan,
            }
        return out


# --- the command line ------------------------------------------------------------------------


def describe(pointer: Pointer) -> str:
    c = pointer.canary
    assert c is not None
    return (
        f"experiment: {c.version} on {c.percent:g}% of users ({c.mode}, salt {c.salt!r}) beside "
        f"{pointer.version}, since {c.started_at}"
    )


def render(pointer: Pointer, cmp: Comparison, test: SequentialTest) -> str:
    rows = [f"{'arm':<7} {'version':<24} {'users':>7} {'impressions':>12} {'clicks':>8}  CTR [95% CI]"]
    for arm, version, s in (
        ("stable", pointer.version, cmp.stable),
        ("canary", pointer.canary.version if pointer.canary else "?", cmp.canary),
    ):
        lo, hi = s.interval()
        ci = f"{s.ctr:.4f} [{lo:.4f}, {hi:.4f}]" if math.isfinite(s.variance) else f"{s.ctr:.4f}"
        rows.append(f"{arm:<7} {version:<24} {s.users:>7} {s.impressions:>12} {s.clicks:>8}  {ci}")
    level = f"{1 - test.alpha:.0%}"
    if math.isfinite(cmp.low):
        rows.append(
            f"lift {cmp.lift:+.2%} [{cmp.low:+.2%}, {cmp.high:+.2%}] ({level} always-valid interval), "
            f"p = {cmp.p_value:.4g} (sequential mSPRT, tau {test.tau:g}; valid at every look)"
        )
    else:
        rows.append(f"lift {cmp.lift:+.2%}; no interval until each arm has {test.min_clicks} clicks")
    rows.append(f"decision: {cmp.decision}: {cmp.reason}")
    return "\n".join(rows)


def render_shadow(pointer: Pointer, scores: dict[str, Any]) -> str:
    rows = [f"{scores['impressions']} served impressions scored by both versions, {scores['clicks']} clicks"]
    rows.append(f"{'arm':<7} {'version':<24} {'logloss':>8} {'AUC':>7} {'GAUC':>7} {'mean CTR':>9}")
    for arm, version in (
        ("stable", pointer.version),
        ("canary", pointer.canary.version if pointer.canary else "?"),
    ):
        s = scores[arm]
        metrics = f"{s['logloss']:>8.4f} {s['auc']:>7.4f} {s['gauc']:>7.4f} {s['mean_ctr']:>9.4f}"
        rows.append(f"{arm:<7} {version:<24} {metrics}")
    rows.append("shadow mode measures predictions, not clicks earned: to decide, run the canary as a split")
    return "\n".join(rows)


def finish(repo: ModelRepository, decision: str, a: argparse.Namespace) -> Pointer:
    """Promote or abort: the pointer flip, then the roll-out on every instance."""
    before = repo.pointer()
    pointer = repo.promote() if decision == "promote" else repo.abort()
    assert before is not None and before.canary is not None
    print(
        f"{decision}: current is {pointer.version}; the experiment with {before.canary.version} ended",
        flush=True,
    )
    roll_out(pointer.version, a, ("roll-out", "verify"), canary=None)
    return pointer


def auto(
    repo: ModelRepository, pointer: Pointer, exp: Experiment, test: SequentialTest, a: argparse.Namespace
) -> int:
    deadline = time.monotonic() + a.timeout if a.timeout else math.inf
    p, looks = 1.0, 0
    while True:
        now = repo.pointer()
        if now is None or now.canary != pointer.canary or now.version != pointer.version:
            print(
                "the pointer changed under the experiment (promoted, aborted or redeployed by hand); stopping"
            )
            return 1
        exp.update()
        cmp = exp.compare(test, p)
        p, looks = cmp.p_value, looks + 1
        print(f"look {looks}: " + render(pointer, cmp, test).replace("\n", "\n  "), flush=True)
        write_json(a.json, pointer, cmp, looks)
        if cmp.decision in ("promote", "abort"):
            finish(repo, cmp.decision, a)
            return 0
        if cmp.decision == "no difference":
            finish(repo, "abort", a)  # nothing earned: the stable version keeps every user
            return 0
        if time.monotonic() > deadline:
            print(f"--timeout {a.timeout:g} s passed without a decision; the experiment keeps running")
            return 2
        time.sleep(a.interval)


def write_json(path: Path | None, pointer: Pointer, cmp: Comparison, looks: int) -> None:
    if path is None:
        return
    # The arms' figures are "stable" and "canary"; the versions and the split are "experiment".
    experiment = {"stable": pointer.version, "canary": pointer.canary.to_json() if pointer.canary else None}
    body = {"experiment": experiment, "looks": looks, **asdict(cmp)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body, indent=1))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(
        prog="scripts/experiment.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("command", choices=("status", "promote", "abort"))
    p.add_argument("--auto", action="store_true", help="with status: look every --interval s and decide")
    add_rollout_args(p)  # --models, --instance, --admin-token, --verify-*
    env = tools()
    p.add_argument("--redis-url", default=env.redis_url, help="default $DIN_REDIS_URL")
    p.add_argument("--key-prefix", default=env.key_prefix, help="default $DIN_KEY_PREFIX")
    p.add_argument(
        "--alpha", type=float, default=0.05, help="the chance of any wrong decision between equals"
    )
    p.add_argument("--margin", type=float, default=0.0, help="promote once not worse by this relative lift")
    p.add_argument(
        "--tau", type=float, default=0.05, help="mixture scale: the relative lift to detect fastest"
    )
    p.add_argument("--max-impressions", type=int, default=100_000, help="both arms; then 'no difference'")
    p.add_argument("--min-clicks", type=int, default=30, help="per arm, before any decision")
    p.add_argument("--interval", type=float, default=10.0, help="seconds between looks (--auto)")
    p.add_argument(
        "--timeout", type=float, default=0.0, help="give up after this many seconds (--auto; 0: never)"
    )
    p.add_argument("--label-window-seconds", type=float, default=DEFAULT_WINDOW_SECONDS)
    p.add_argument("--json", type=Path, help="write the last look here")
    a = p.parse_args(argv)
    if a.auto and a.command != "status":
        p.error("--auto goes with status")
    if a.interval <= 0 or a.timeout < 0 or a.min_clicks < 1 or a.label_window_seconds < 0:
        p.error("--interval > 0, --timeout >= 0, --min-clicks >= 1 and --label-window-seconds >= 0")
    try:
        a.test = SequentialTest(a.alpha, a.margin, a.tau, a.max_impressions, a.min_clicks)
    except ValueError as e:
        p.error(f"--alpha, --margin, --tau, --max-impressions: {e}")
    a.instance = [u.rstrip("/") for u in a.instance]
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    repo = ModelRepository(a.models)
    try:
        pointer = repo.pointer()
        if a.command == "status" and (pointer is None or pointer.canary is None):
            serving = f"{pointer.version} serves every user" if pointer else "nothing is published"
            print(f"no experiment is running in {repo.root}: {serving} (redeploy.py --canary P starts one)")
            return 0
        if pointer is None or pointer.canary is None:
            raise RepositoryError(
                f"{repo.root}: no canary is running (scripts/redeploy.py --canary P starts one)"
            )
        if a.command != "status":
            finish(repo, a.command, a)
            return 0
        print(describe(pointer), flush=True)
        client = sync_client(a.redis_url, timeout_seconds=30)
        exp = Experiment(client, keys_for(a.redis_url, a.key_prefix), pointer, a.label_window_seconds)
        if pointer.canary.mode == "shadow":
            if a.auto:
                raise RepositoryError("shadow mode serves no canary traffic to decide on: run it as a split")
            exp.update()
            print(render_shadow(pointer, exp.shadow_scores()))
            return 0
        if a.auto:
            return auto(repo, pointer, exp, a.test, a)
        exp.update()
        cmp = exp.compare(a.test)
        print(render(pointer, cmp, a.test))
        write_json(a.json, pointer, cmp, 1)
    except (RepositoryError, DeployError, redis.RedisError, OSError, ValueError) as e:
        print(f"experiment: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
