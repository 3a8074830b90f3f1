"""What several test modules share: the Redis they use, key-prefix cleanup, and bundle damage."""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import redis

from contracts.bundle import MANIFEST_FILE, MODEL_FILE, SPACE_FILE, sha256
from contracts.keys import Keys, encode_feedback
from jobs.feedback import Exporter

REDIS_URL = "redis://127.0.0.1:6379/15"  # tests' own DB; every test writes under its own prefix


def stored_keys(prefix: str) -> list[bytes]:
    r = redis.Redis.from_url(REDIS_URL)
    try:
        return list(r.scan_iter(match=f"{prefix}*"))
    finally:
        r.close()


@contextmanager
def redis_prefix() -> Iterator[str]:
    """A fresh key prefix; every key under it is deleted afterwards."""
    prefix = f"test:{uuid.uuid4().hex}:"
    try:
        yield prefix
    finally:
        keys = stored_keys(prefix)
        if keys:
            r = redis.Redis.from_url(REDIS_URL)
            r.delete(*keys)
            r.close()


def flip_a_byte(folder: Path) -> None:
    data = bytearray((folder / MODEL_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / MODEL_FILE).write_bytes(bytes(data))


def drop_a_context_feature(folder: Path) -> None:
    """A consistent bundle (hashes match) whose graph no longer fits its schema."""
    space = json.loads((folder / SPACE_FILE).read_text())
    space["schema"]["context"] = space["schema"]["context"][:-1]
    (folder / SPACE_FILE).write_text(json.dumps(space))
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    manifest["sha256"][SPACE_FILE] = sha256(folder / SPACE_FILE)
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def served_log(table: pa.Table, out: Path, first_item: int = 0) -> None:
    """An exported folder made the way the service makes one: each sample of ``table`` (the
    synthetic generator's) logged as an answer with one impression, clicks sent for its label 1
    rows, and jobs.feedback export run over the streams. Item ids are offset by ``first_item``
    so a second log can bring ids the first never had."""
    rows = table.to_pylist()
    random.Random(0).shuffle(rows)  # the generator writes user by user; traffic interleaves them
    start = time.time() - 7200  # served over the last two hours: all ripe
    with redis_prefix() as prefix:
        r, keys = redis.Redis.from_url(REDIS_URL), Keys(prefix)
        for k, row in enumerate(rows):
            at = start + k * 3600 / len(rows)
            item = row["item_id"] + first_item
            record = {
                "request_id": f"q{k}", "ts": at, "user_id": row["user_id"], "model_version": "v0",
                "degraded": False, "fields": ["item_id", "category_id"],
                "history": [{"item_id": i + first_item, "category_id": c}
                            for i, c in zip(row["hist_item_id"], row["hist_category_id"], strict=True)],
                "profile": {"age": row["age"], "gender": row["gender"]},
                "context": {"hour": row["hour"], "weekday": row["weekday"]},
                "candidates": [{"item_id": item, "category_id": row["category_id"]}], "ctr": [0.5],
            }  # fmt: skip
            r.xadd(keys.impressions()[0], {"r": encode_feedback(record)}, id=f"{int(at * 1000)}-*")
            if row["label"]:
                click = {
                    "user_id": row["user_id"],
                    "item_id": item,
                    "ts": int(at),
                    "at": at + 1,
                    "request_id": f"q{k}",
                }
                r.xadd(keys.clicks()[0], {"r": encode_feedback(click)})
        Exporter(r, keys, out, window_seconds=60).export()
        r.close()
