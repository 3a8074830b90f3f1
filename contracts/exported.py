"""An exported folder's layout, shared by the feedback export that writes it and training that reads it.

    DIR/2026-12-02T06/part-<batch>[-<k>].parquet   the samples of one hour (several files when
                                                   their columns' types differ)
    DIR/_exports.jsonl                             the commit log: one line per committed batch,
                                                   {"last": {stream key: entry id}, "files", "rows", "at"}

A file belongs to the folder once a commit line names it; the rest is an interrupted batch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

COMMITS = "_exports.jsonl"


def read_commits(out: Path) -> list[dict[str, Any]]:
    """The committed batches of an exported folder, oldest first: each key's last entry id, files."""
    path = out / COMMITS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
