"""Does a change cost anything on /score? CPU per request of this tree against an earlier commit,
in-process and alternating, so that both see the same machine.

    python scripts/bench_ab.py --against 8b9e896 --models runs/simx/models

Each round runs, in a fresh subprocess per tree, the app from ``service.main.create_app`` (impression
log off, default settings otherwise) on the ``--models`` repository and real Redis (DB 15, its own
prefix), driven through httpx's ASGI transport: no sockets, no uvicorn, so what differs is the
app's own code. It reports the process CPU time per /score (N = 200 candidates, a SYNTHETIC user's
history loaded into Redis first), the mean and spread over the rounds of each tree. The earlier commit is
checked out with ``git worktree`` into a temporary folder and removed afterwards.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchutil import delete_prefix, machine
from liveserver import ROOT

REDIS_URL, PREFIX = "redis://127.0.0.1:6379/15", "bench-ab:"

CHILD = r"""
import asyncio, json, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[1])
import httpx2 as httpx
from service.main import create_app
from service.settings import Settings
import service
assert service.__file__.startswith(sys.argv[1]), service.__file__
body = json.dumps({"user_id": 1, "candidates": [{"item_id": i, "category_id": i % 50} for i in range(200)]})
headers = {"content-type": "application/json"}

async def bench(app, n):
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
            for _ in range(300):
                await c.post("/score", content=body, headers=headers)
            t = time.process_time()
            for _ in range(n):
                await c.post("/score", content=body, headers=headers)
            return (time.process_time() - t) / n * 1000

settings = Settings(models=Path(sys.argv[2]), redis_url="redis://127.0.0.1:6379/15", key_prefix="bench-ab:",
                    log_impressions=False)
print(json.dumps(asyncio.run(bench(create_app(settings), int(sys.argv[3])))))
"""


def one(tree: Path, models: Path, requests: int) -> float:
    done = subprocess.run([sys.executable, "-c", CHILD, str(tree), str(models), str(requests)],
                          capture_output=True, text=True, cwd=tree, check=True)  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", required=True, help="the earlier commit")
    p.add_argument("--models", type=Path, required=True, help="a repository with a current version")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--requests", type=int, default=2000, help="per round and tree")
    a = p.parse_args(argv)
    load = [sys.executable, "scripts/load_behaviors.py", "--data", "synthetic", "--users", "20",
            "--redis-url", REDIS_URL, "--key-prefix", PREFIX, "--cap", "50", "--no-progress"]  # fmt: skip
    subprocess.run(load, cwd=ROOT, check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "base"
        subprocess.run(["git", "worktree", "add", "-f", "-q", str(base), a.against], cwd=ROOT, check=True)
        try:
            ms: dict[str, list[float]] = {"this tree": [], a.against: []}
            for r in range(a.rounds):
                for name, tree in (("this tree", ROOT), (a.against, base))[:: 1 if r % 2 else -1]:
                    ms[name].append(one(tree, a.models.resolve(), a.requests))
                print(
                    f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.3f} ms" for k, v in ms.items()), flush=True
                )
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=ROOT, check=False)
            delete_prefix(REDIS_URL, PREFIX)
    summary = {k: {"mean_ms": statistics.mean(v), "stdev_ms": statistics.stdev(v)} for k, v in ms.items()}
    for k, s in summary.items():
        print(f"{k}: {s['mean_ms']:.3f} ms CPU per /score (stdev over {a.rounds} rounds {s['stdev_ms']:.3f})")
    print(f"`scripts/bench_ab.py {' '.join(argv or sys.argv[1:])}`; machine: {machine()}")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
