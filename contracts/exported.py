"""An exported folder's layout, shared by the feedback export that writes it and training that reads it.

    DIR/2026-12-02T06/part-<batch>[-<k>].parquet   the samples of one hour (several files when
                                                   their columns' types differ)
    DIR/_exports.jsonl                             the commit log: one line per committed batch,
                                                   {"last": {stream key: entry id}, "files", "rows", "at"}
    DIR/_erasure.json                              the tombstones already applied to the files
                                                   (jobs.erase), so each erasure rewrites them once
    DIR/.lock                                      held by whichever job writes the folder

A file belongs to the folder once a commit line names it; the rest is an interrupted batch.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

COMMITS = "_exports.jsonl"
ERASURE = "_erasure.json"
LOCK = ".lock"


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """The folder to this process alone (an export and an erasure never rewrite it at once); a
    second writer waits."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_text(path: Path, text: str) -> None:
    """``path`` holds ``text`` after this, or its old content if it stopped half way (a temporary
    file, fsynced, renamed over it, the folder fsynced)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    fsync(tmp)
    os.replace(tmp, path)
    fsync(path.parent)


def write_commits(out: Path, batches: list[dict[str, Any]]) -> None:
    """The commit log replaced as a whole (an erasure or retention changed its files and rows)."""
    replace_text(out / COMMITS, "".join(json.dumps(b) + "\n" for b in batches))


def read_commits(out: Path) -> list[dict[str, Any]]:
    """The committed batches of an exported folder, oldest first: each key's last entry id, files."""
    path = out / COMMITS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
