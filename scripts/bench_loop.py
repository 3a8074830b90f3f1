"""Event-loop CPU per /score, in-process: the app's ASGI callable invoked directly (no uvicorn, no
wrk, no sockets to the client) on real Redis and the real model, so the main thread's CPU time
per request is the app's own, without the HTTP server and the load generator sharing the cores.

    python scripts/bench_loop.py --run runs/din          # log on and off, GET /healthz as the floor

The same users, candidates (N = 200, L = 50) and Redis layout as scripts/bench_service.py. Used to
decide which change to the /score path pays (docs/benchmarks.md), one configuration per process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import redis
import uvloop

from bench_service import PREFIX, REDIS_URL, L, clear, load_users
from benchutil import machine
from liveserver import ROOT
from model.onnx_export import export_bundle
from model.repository import ModelRepository
from service.keys import Keys
from service.main import create_app
from service.settings import Settings


async def call(app: Any, body: bytes, path: str, method: str) -> int:
    """One request through the whole ASGI stack (middleware included); returns the status."""
    headers = [(b"host", b"bench"), (b"content-type", b"application/json")]
    headers.append((b"content-length", str(len(body)).encode()))
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 2),
        "state": {},
    }
    sent, status = False, 0

    async def receive() -> dict:
        nonlocal sent
        if sent:  # the app asks again only to watch for a disconnect
            await asyncio.Event().wait()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        nonlocal status
        status = message.get("status", status)

    await app(scope, receive, send)
    return status


async def run(settings: Settings, bodies: list[bytes], requests: int) -> dict[str, float]:
    app = create_app(settings)
    out = {}
    async with app.router.lifespan_context(app):
        for body in bodies[:32]:  # warm-up
            await call(app, body, "/score", "POST")
        for name, path, method in (("healthz", "/healthz", "GET"), ("score", "/score", "POST")):
            cpu, wall = time.thread_time(), time.perf_counter()
            for i in range(requests):
                status = await call(app, bodies[i % len(bodies)] if method == "POST" else b"", path, method)
                if status != 200:
                    raise SystemExit(f"{method} {path} answered {status}")
            out[f"{name}_cpu_us"] = (time.thread_time() - cpu) / requests * 1e6
            out[f"{name}_wall_us"] = (time.perf_counter() - wall) / requests * 1e6
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=ROOT / "runs/bench_train/amazon-sports/DIN_default")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/amazon-sports")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--logging", nargs="+", choices=("on", "off"), default=["off", "on"])
    a = p.parse_args(argv)
    if not (a.run / "ckpt.pt").exists() or not a.data.is_dir():
        p.error(f"need a trained run ({a.run}) and the dataset folder ({a.data})")
    tmp = Path(tempfile.mkdtemp(prefix="bench-loop-"))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        export_bundle(a.run / "ckpt.pt", tmp / "bundle", version="bench")
        repo = ModelRepository(tmp / "models")
        repo.set_current(repo.publish(tmp / "bundle"))
        users, items = load_users(client, Keys(PREFIX), a.data)
        rng = random.Random(0)
        bodies = [
            json.dumps({"user_id": rng.choice(users), "candidates": rng.sample(items, 200)}).encode()
            for _ in range(64)
        ]
        for logging in a.logging:
            settings = Settings(models=repo.root, redis_url=REDIS_URL, key_prefix=PREFIX,
                                log_impressions=logging == "on", max_queue_ms=0)  # fmt: skip
            r = uvloop.run(run(settings, bodies, a.requests))
            print(
                f"log {logging}: /score main-thread CPU {r['score_cpu_us']:.0f} µs/request "
                f"(wall {r['score_wall_us']:.0f}); GET /healthz {r['healthz_cpu_us']:.0f} µs",
                flush=True,
            )
    finally:
        clear(client)
        client.close()
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"N = 200, L = {L}, {a.requests} requests each; machine: {machine()}")


if __name__ == "__main__":
    main()
