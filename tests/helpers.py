"""What several test modules share: the Redis they use, key-prefix cleanup, and bundle damage."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from model.bundle import MANIFEST_FILE, MODEL_FILE, SPACE_FILE, sha256

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
