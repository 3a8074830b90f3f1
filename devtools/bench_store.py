"""Which Redis layout for behaviour histories: read latency, decode cost and memory per user.

    python scripts/bench_store.py

Writes 2,000 users x 50 behaviours (real amazon-sports ids if ../shared/data is there, else
random) in each layout into DB 13 under ``bench-store:`` (removed afterwards), then times the
/score read path: one pipelined round trip for the history plus decoding it to (item, category)
values. Layouts:
  json-list   a Redis list, one JSON object per behaviour (what the service uses)
  array-list  a Redis list, one JSON array [item, category, ts] per behaviour (positional)
  packed-str  one string per user of fixed-width int64 records (append + trim needs Lua)
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import orjson
import redis

from contracts.keys import decode_history, encode_value
from devtools.benchutil import machine

URL, PREFIX, USERS, L = "redis://127.0.0.1:6379/13", "bench-store:", 2000, 50
ROOT = Path(__file__).resolve().parents[1]


def histories(rng: np.random.Generator) -> np.ndarray:
    """[USERS, L, 3] item, category, ts."""
    items = rng.integers(1, 18_357, (USERS, L))
    return np.stack([items, items % 959, np.tile(np.arange(L), (USERS, 1)) + 1_700_000_000], axis=2)


def write(client: redis.Redis, layout: str, h: np.ndarray) -> None:
    pipe = client.pipeline(transaction=False)
    for u in range(USERS):
        key = f"{PREFIX}{layout}:{u}"
        if layout == "json-list":  # the service's own format
            pipe.rpush(
                key,
                *(encode_value({"item_id": int(i), "category_id": int(c), "ts": int(t)}) for i, c, t in h[u]),
            )
        elif layout == "array-list":
            pipe.rpush(key, *(orjson.dumps([int(i), int(c), int(t)]) for i, c, t in h[u]))
        else:
            pipe.set(key, h[u].astype("<i8").tobytes())
    pipe.execute()


def reader(client: redis.Redis, layout: str) -> Callable[[int], np.ndarray]:
    def read(u: int) -> np.ndarray:
        key = f"{PREFIX}{layout}:{u}"
        pipe = client.pipeline(transaction=False)
        if layout == "packed-str":
            pipe.get(key)
            raw = pipe.execute()[0]
            return np.frombuffer(raw, dtype="<i8").reshape(-1, 3)[:, :2]
        pipe.lrange(key, -L, -1)
        raws = pipe.execute()[0]
        if layout == "json-list":
            return np.array([[r["item_id"], r["category_id"]] for r in decode_history(raws)])
        return np.array([orjson.loads(r)[:2] for r in raws])

    return read


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reads", type=int, default=5000)
    a = p.parse_args(argv)
    client = redis.Redis.from_url(URL)
    h = histories(np.random.default_rng(0))
    print(f"{machine()}; Redis {client.info()['redis_version']}; {USERS} users x {L} behaviours")
    print("| layout | read + decode p50 µs | p99 µs | bytes per user (MEMORY USAGE) |\n|---|---|---|---|")
    try:
        for layout in ("json-list", "array-list", "packed-str"):
            write(client, layout, h)
            read = reader(client, layout)
            expected = h[7, :, :2]
            assert np.array_equal(read(7), expected), layout
            for u in range(200):
                read(u)
            times = []
            for k in range(a.reads):
                t0 = time.perf_counter()
                read(k % USERS)
                times.append(time.perf_counter() - t0)
            times.sort()
            mem = statistics.mean(
                client.memory_usage(f"{PREFIX}{layout}:{u}") or 0 for u in range(0, USERS, 20)
            )
            print(
                f"| {layout} | {statistics.median(times) * 1e6:.0f} "
                f"| {times[int(0.99 * len(times))] * 1e6:.0f} | {mem:.0f} |"
            )
    finally:
        keys = list(client.scan_iter(match=f"{PREFIX}*", count=10_000))
        for k in range(0, len(keys), 5000):
            client.delete(*keys[k : k + 5000])
        client.close()
