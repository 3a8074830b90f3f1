"""CPU per /score of the app itself, in-process: its ASGI callable invoked directly (middleware
included; no uvicorn, no sockets, no load generator sharing the cores), on real Redis and a real
model, so what differs between two measurements is the app's own code.

    python scripts/bench_cpu.py --models runs/din-models                   # this tree, log off and on
    python scripts/bench_cpu.py --models runs/din-models --against 8b9e896 # against an earlier commit

Every measurement runs in a fresh subprocess with one tree's code on its path (an earlier commit is
checked out with ``git worktree`` into a temporary folder and removed afterwards), in rounds that
alternate the order, so both trees see the same machine. It reports the process CPU per /score
(N = 200 candidates, a SYNTHETIC user's history of 50) and per GET /healthz, the floor of the
ASGI stack, as the mean and spread over the rounds. Redis database 11 under its own prefix: never
the tests' database.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from contracts.repository import ModelRepository
from devtools.benchutil import machine
from devtools.liveserver import ROOT
from devtools.stack import Stack

REDIS_URL, PREFIX, N, L = "redis://127.0.0.1:6379/11", "bench-cpu:", 200, 50

# Run with one tree's code first on the path; only what every tree since the in-process app has.
CHILD = r"""
import asyncio, json, sys, time
from pathlib import Path
import service
from service.main import create_app
from service.settings import Settings
tree, models, requests, logging, redis_url, prefix, n = sys.argv[1:8]
assert service.__file__.startswith(tree), service.__file__

async def call(app, body, path, method):
    headers = [(b"host", b"bench"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 2), "state": {}}
    sent, status = False, 0
    async def receive():
        nonlocal sent
        if sent:  # asked again only to watch for a disconnect
            await asyncio.Event().wait()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}
    async def send(message):
        nonlocal status
        status = message.get("status", status)
    await app(scope, receive, send)
    return status

async def main():
    settings = Settings(models=Path(models), redis_url=redis_url, key_prefix=prefix,
                        log_impressions=logging == "on", max_queue_ms=0)
    app = create_app(settings)
    body = json.dumps({"user_id": 1, "candidates": [{"item_id": i, "category_id": i % 50}
                                                    for i in range(int(n))]}).encode()
    out = {}
    async with app.router.lifespan_context(app):
        for _ in range(200):
            await call(app, body, "/score", "POST")
        for name, path, method in (("healthz", "/healthz", "GET"), ("score", "/score", "POST")):
            t = time.process_time()
            for _ in range(int(requests)):
                status = await call(app, body if method == "POST" else b"", path, method)
                assert status == 200, (path, status)
            out[name] = (time.process_time() - t) / int(requests) * 1000
    print(json.dumps(out))

import uvloop
uvloop.run(main())
"""


def measure(
    tree: Path, models: Path, requests: int, logging: str, redis_url: str = REDIS_URL, prefix: str = PREFIX
) -> dict[str, float]:
    """One subprocess with ``tree``'s code: ms of process CPU per /score and per GET /healthz."""
    env = os.environ | {"PYTHONPATH": str(tree)}
    args = [str(tree), str(models), str(requests), logging, redis_url, prefix, str(N)]
    done = subprocess.run(
        [sys.executable, "-c", CHILD, *args], capture_output=True, text=True, cwd=tree, env=env, timeout=900
    )
    if done.returncode != 0:
        raise SystemExit(f"the measurement in {tree} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, required=True, help="a repository with a current version")
    p.add_argument("--against", help="an earlier commit to measure beside this tree")
    p.add_argument("--logging", nargs="+", choices=("off", "on"), default=["off", "on"])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--requests", type=int, default=2000, help="per measurement")
    a = p.parse_args(argv)
    if not (a.models / "current").is_file():
        p.error(f"--models {a.models}: no current version (scripts/redeploy.py publishes one)")
    stack = Stack(ModelRepository(a.models.resolve()), REDIS_URL, PREFIX)
    stack.load_users(users=20, cap=L)
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this tree": ROOT}
        if a.against:
            trees[a.against] = Path(tmp) / "base"
            add = ["git", "worktree", "add", "-f", "-q", str(trees[a.against]), a.against]
            subprocess.run(add, cwd=ROOT, check=True)
        ms: dict[tuple[str, str], list[dict[str, float]]] = {}
        try:
            for r in range(a.rounds):
                points = [(name, log) for name in trees for log in a.logging]
                for name, log in points if r % 2 == 0 else points[::-1]:
                    got = measure(trees[name], stack.repo.root, a.requests, log)
                    ms.setdefault((name, log), []).append(got)
                print(f"round {r + 1} of {a.rounds} done", flush=True)
        finally:
            if a.against:
                remove = ["git", "worktree", "remove", "--force", str(trees[a.against])]
                subprocess.run(remove, cwd=ROOT, check=False)
            stack.clear()
    summary = {}
    for (name, log), runs in ms.items():
        score, floor = [m["score"] for m in runs], [m["healthz"] for m in runs]
        summary[f"{name}, log {log}"] = {
            "score_ms": statistics.mean(score),
            "score_stdev_ms": statistics.stdev(score) if len(score) > 1 else 0.0,
            "healthz_ms": statistics.mean(floor),
        }
    for key, s in summary.items():
        print(f"{key}: {s['score_ms']:.3f} ms CPU per /score (stdev {s['score_stdev_ms']:.3f} over "
              f"{a.rounds} rounds); GET /healthz {s['healthz_ms']:.3f} ms")  # fmt: skip
    command = f"python scripts/bench_cpu.py {' '.join(argv or sys.argv[1:])}"
    print(f"`{command}`; N = {N}, L = {L}; machine: {machine()}")
    print(json.dumps(summary))
    return 0
