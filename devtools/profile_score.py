"""Where one /score spends its CPU, by stage: the app's ASGI callable invoked in-process (middleware
included; no uvicorn, no sockets) on real Redis and a real model, under cProfile with the event-loop
thread's CPU clock, so the figures are CPU, not waiting.

    python scripts/profile_score.py --models runs/din-models

Each stage is the cumulative CPU of the functions that do it (they do not nest in one another),
metrics the own time of every prometheus_client function, and the rest (routing, middleware,
asyncio, the route's own lines) what is left of the request's total. The profiler slows every
Python call, so the shares come from the profile and are applied to the request's CPU measured
without it in the same run. The model runs in onnxruntime's thread: its CPU is the bare call,
measured apart. N = 200 candidates, a SYNTHETIC user's history of 50, impression log on.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import time
from pathlib import Path
from typing import Any

from contracts.repository import ModelRepository
from devtools.benchutil import machine
from devtools.stack import Stack

REDIS_URL, PREFIX, N, L = "redis://127.0.0.1:6379/11", "profile-score:", 200, 50
# stage -> (file suffix, function name) of the functions whose cumulative CPU it is
STAGES: dict[str, list[tuple[str, str]]] = {
    "parse + validate the body": [("service/body.py", "parse")],
    "check and encode the candidates' ids": [("service/features.py", "request")],
    "Redis read (client side)": [("service/store.py", "read")],
    "build the model's inputs (history, profile, context)": [("service/features.py", "feeds")],
    "hand the model call to its thread and back": [("service/runner.py", "run")],
    "impression record (queue, encode, write)": [
        ("service/impressions.py", "log"),
        ("service/impressions.py", "_encode"),
        ("service/impressions.py", "flush"),
    ],
}


async def call(app: Any, body: bytes, path: str, method: str) -> int:
    headers = [(b"host", b"profile"), (b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]  # fmt: skip
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
             "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "headers": headers, "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 2), "state": {}}  # fmt: skip
    sent, status = False, 0

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            await asyncio.Event().wait()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        nonlocal status
        status = message.get("status", status)

    await app(scope, receive, send)
    return status


def stage_cpu(stats: pstats.Stats, requests: int) -> dict[str, float]:
    """µs of CPU per request, per stage, from the profile."""
    entries: dict[tuple[str, int, str], tuple[Any, ...]] = stats.stats  # type: ignore[attr-defined]
    out = {
        stage: sum(v[3] for (f, _, n), v in entries.items() for suffix, name in functions
                   if f.endswith(suffix) and n == name)
        for stage, functions in STAGES.items()
    }  # fmt: skip
    # orjson.dumps as the route calls it (the impression record calls it too, counted there)
    out["serialise the answer"] = sum(
        ct
        for (_, _, n), v in entries.items()
        if "orjson.dumps" in n
        for (f, _, _), (_, _, _, ct) in v[4].items()
        if f.endswith("routes/score.py")
    )
    out["metrics (prometheus_client)"] = sum(
        v[2] for (f, _, _), v in entries.items() if "prometheus_client" in f
    )
    return {k: v / requests * 1e6 for k, v in out.items()}


async def profile(
    models: Path, requests: int, redis_url: str = REDIS_URL, prefix: str = PREFIX
) -> dict[str, Any]:
    from service.main import create_app
    from service.settings import Settings

    settings = Settings(models=models, redis_url=redis_url, key_prefix=prefix, max_queue_ms=0)
    app = create_app(settings)
    body = json.dumps({"user_id": 1, "candidates": [{"item_id": i, "category_id": i % 50}
                                                    for i in range(N)]}).encode()  # fmt: skip
    async with app.router.lifespan_context(app):
        for _ in range(200):
            await call(app, body, "/score", "POST")
        t = time.thread_time()
        for _ in range(requests):
            await call(app, body, "/score", "POST")
        unprofiled = (time.thread_time() - t) / requests * 1e6
        profiler = cProfile.Profile(time.thread_time)
        profiler.enable()
        for _ in range(requests):
            assert await call(app, body, "/score", "POST") == 200
        profiler.disable()
        services = app.state.services
        runner = services.models.runner
        state = await services.store.read(1, limit=runner.bundle.max_history, with_profile=True)
        history = state.history if state else []
        from service.payloads import ScoreRequest

        req = ScoreRequest.model_validate_json(body)
        checked = runner.features.request(req, settings.max_candidates)
        feeds = runner.features.feeds(history, {}, {}, checked.encoded)
        for _ in range(50):
            runner.bundle.run(feeds)
        t = time.thread_time()
        for _ in range(200):
            runner.bundle.run(feeds)
        model = (time.thread_time() - t) / 200 * 1e6
    stats = pstats.Stats(profiler)
    profiled_total = sum(v[2] for v in stats.stats.values()) / requests * 1e6  # type: ignore[attr-defined]
    stages = stage_cpu(stats, requests)
    scale = unprofiled / profiled_total
    scaled = {k: v * scale for k, v in stages.items()}
    scaled["the rest: routing, middleware, asyncio, the route's own lines"] = unprofiled - sum(
        scaled.values()
    )
    return {
        "event_loop_us": unprofiled,
        "profiled_us": profiled_total,
        "stages_us": scaled,
        "model_us": model,
    }


def table(result: dict[str, Any]) -> str:
    total = result["event_loop_us"] + result["model_us"]
    rows = [*result["stages_us"].items(), ("the model call (onnxruntime's thread)", result["model_us"])]
    md = "| stage | CPU µs per /score | share |\n|---|---|---|\n"
    md += "\n".join(f"| {k} | {v:.0f} | {v / total:.0%} |" for k, v in rows)
    return md + f"\n| **all** | **{total:.0f}** | |"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, required=True, help="a repository with a current version")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    if not (a.models / "current").is_file():
        p.error(f"--models {a.models}: no current version (scripts/redeploy.py publishes one)")
    stack = Stack(ModelRepository(a.models.resolve()), REDIS_URL, PREFIX)
    stack.load_users(users=20, cap=L)
    try:
        import uvloop

        result = uvloop.run(profile(stack.repo.root, a.requests))
    finally:
        stack.clear()
    print(table(result))
    print(f"\n`python scripts/profile_score.py {' '.join(argv if argv is not None else [])}`; "
          f"N = {N}, L = {L}, impression log on; machine: {machine()}")  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return 0
