"""A straightforward CTR service: what a competent user would write in an afternoon around the
tiled ONNX export of DIN's training graph. devtools/bench_service.py runs it in the same run, on the
same Redis data, weights and load as the real service, as the baseline.

    BASELINE_MODEL_DIR=runs/baseline BASELINE_REDIS_URL=redis://127.0.0.1:6379/13 \\
        BASELINE_KEY_PREFIX=bench: python -m uvicorn devtools.baseline.app:app

pydantic request models; redis.asyncio LRANGE plus HGETALL; Python dict id lookups; the tiled
graph run in a thread; sort and return. It reads the service's Redis layout (a list of JSON
behaviour records and a hash of JSON profile values per user) and takes integer user ids.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import redis.asyncio as aioredis
from fastapi import FastAPI
from pydantic import BaseModel, create_model

MODEL_DIR = Path(os.environ.get("BASELINE_MODEL_DIR", "runs/baseline"))
REDIS_URL = os.environ.get("BASELINE_REDIS_URL", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("BASELINE_KEY_PREFIX", "")

meta = json.loads((MODEL_DIR / "meta.json").read_text())
schema, max_history = meta["schema"], meta["max_history"]
types = {name: int if v["type"] == "int" else str for name, v in meta["vocab"].items()}
vocab = {name: {types[name](k): i for k, i in v["ids"].items()} for name, v in meta["vocab"].items()}
session = ort.InferenceSession(str(MODEL_DIR / "model.onnx"))
redis = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
app = FastAPI()

Candidate = create_model("Candidate", **{name: (types[name], ...) for name in schema["behavior"]})  # type: ignore[call-overload]


class ScoreRequest(BaseModel):
    user_id: int
    candidates: list[Candidate]
    top_k: int | None = None


def lookup(name: str, value: object) -> int:
    return vocab[name].get(value, 1)  # type: ignore[call-overload]  # 1: unknown id


@app.get("/readyz")
async def ready() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/score")
async def score(req: ScoreRequest) -> dict[str, object]:
    raw_history = await redis.lrange(f"{PREFIX}hist:{req.user_id}", -max_history, -1)
    raw_profile = await redis.hgetall(f"{PREFIX}prof:{req.user_id}")
    history = [json.loads(r) for r in raw_history]
    profile = {k: json.loads(v) for k, v in raw_profile.items()}
    t = time.gmtime()
    context = {"hour": t.tm_hour, "weekday": t.tm_wday}

    n = len(req.candidates)
    cands = [c.model_dump() for c in req.candidates]
    candidate = np.array([[lookup(f, c[f]) for f in schema["behavior"]] for c in cands], dtype=np.int64)
    hist = np.zeros((1, max(len(history), 1), len(schema["behavior"])), dtype=np.int64)
    for j, b in enumerate(history):
        hist[0, j] = [lookup(f, b.get(f)) for f in schema["behavior"]]
    prof = np.array([[lookup(f, profile.get(f)) for f in schema["profile"]]], dtype=np.int64)
    ctx = np.array([[lookup(f, context.get(f)) for f in schema["context"]]], dtype=np.int64)
    feeds = {
        "profile": np.repeat(prof, n, 0),
        "context": np.repeat(ctx, n, 0),
        "candidate": candidate,
        "history": np.repeat(hist, n, 0),
        "history_len": np.full(n, len(history), dtype=np.int64),
    }
    (ctr,) = await asyncio.to_thread(session.run, ["ctr"], feeds)
    order = np.argsort(-ctr)[: req.top_k or n]
    return {"items": [{**cands[i], "ctr": float(ctr[i])} for i in order]}
