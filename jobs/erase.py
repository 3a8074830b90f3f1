"""Forget users: ``python -m jobs.erase --user 42 --user '"anna"' [--out DIR]...``.

Deletes each user's history and profile keys and every stream entry of theirs, leaves a tombstone
(``contracts.erasure``), then rewrites the exported folders given with ``--out`` without their
rows. The export applies the tombstones by itself on its next pass, so ``--out`` only does now what
would happen then. Prints what was removed where, as JSON. The same as ``POST /admin/erase``,
plus the exported folders the service cannot see.

A folder is rewritten atomically, file by file: the filtered copy is written and fsynced beside
the file, the commit log (``_exports.jsonl``) is rewritten with the new row counts and without
files left empty, then each copy replaces its file. A rewrite cut short leaves every file either
old or new and is finished by the next run (the tombstones it applied are recorded last).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from contracts.cli import Parser
from contracts.erasure import erase_users, tombstone
from contracts.exported import ERASURE, fsync, locked, read_commits, replace_text, write_commits
from contracts.ids import RawId, is_id
from contracts.redis_client import sync_client
from contracts.settings import tools


def erased_rows(table: pa.Table, tombstones: set[str]) -> pa.Array:
    """A mask of the rows whose user is tombstoned."""
    users = table["user_id"].unique().to_pylist()
    hit = [u for u in users if u is not None and tombstone(u) in tombstones]
    if not hit:
        return pa.array([False] * table.num_rows)
    return pc.fill_null(
        pc.is_in(table["user_id"], value_set=pa.array(hit, type=table["user_id"].type)), False
    )


def rewrite(out: Path, tombstones: set[str]) -> dict[str, int]:
    """The folder's files without the tombstoned users' rows: how many rows and files changed."""
    batches = read_commits(out)
    changed: dict[str, tuple[pa.Table, int]] = {}
    for batch in batches:
        for name in batch["files"]:
            table = pq.read_table(out / name)
            mask = erased_rows(table, tombstones)
            removed = pc.sum(mask).as_py() or 0
            if removed:
                changed[name] = (table.filter(pc.invert(mask)), removed)
    if not changed:
        return {"rows_removed": 0, "files_rewritten": 0, "files_removed": 0}
    staged = {}
    for name, (table, _) in changed.items():
        if table.num_rows:
            tmp = (out / name).with_name(f".{Path(name).name}.erase")
            pq.write_table(table, tmp)
            fsync(tmp)
            staged[name] = tmp
    for batch in batches:
        batch["rows"] -= sum(changed[n][1] for n in batch["files"] if n in changed)
        batch["files"] = [n for n in batch["files"] if n not in changed or n in staged]
    write_commits(out, batches)
    for name in changed:
        if name in staged:
            os.replace(staged[name], out / name)
        else:
            (out / name).unlink()
        fsync((out / name).parent)
    return {
        "rows_removed": sum(removed for _, removed in changed.values()),
        "files_rewritten": len(staged),
        "files_removed": len(changed) - len(staged),
    }


def apply_tombstones(out: Path, tombstones: set[str]) -> dict[str, int]:
    """Rewrites the folder for the tombstones not yet applied to it (the caller holds its lock)."""
    path = out / ERASURE
    applied = set(json.loads(path.read_text())["applied"]) if path.exists() else set()
    new = tombstones - applied
    if not new:
        return {"rows_removed": 0, "files_rewritten": 0, "files_removed": 0}
    done = rewrite(out, new)
    replace_text(path, json.dumps({"applied": sorted(applied | new), "at": time.time()}))
    return done


def user_arg(text: str) -> RawId:
    """An integer id as digits, a string id in JSON quotes ('"42"' is the string); any other text
    is taken as a string id."""
    value: Any
    try:
        value = json.loads(text)
    except ValueError:
        value = text
    if not is_id(value):
        value = text
    if not is_id(value):
        raise ValueError("not a user id (an integer, or a string of 1 to 256 characters)")
    return value


def main(argv: list[str] | None = None) -> int:
    p = Parser(prog="python -m jobs.erase", description=__doc__.split("\n\n")[0])
    env = tools()
    p.add_argument("--user", action="append", required=True, help="a user id to forget (repeatable)")
    p.add_argument("--out", type=Path, action="append", default=[], help="an exported folder to rewrite now")
    p.add_argument("--redis-url", default=env.redis_url, help="default $DIN_REDIS_URL, as the service")
    p.add_argument("--key-prefix", default=env.key_prefix, help="default $DIN_KEY_PREFIX, as the service")
    a = p.parse_args(argv)
    users: list[RawId] = []
    for text in a.user:
        try:
            users.append(user_arg(text))
        except ValueError as e:
            p.error(f"--user: {e}")
    for out in a.out:
        if not out.is_dir():
            p.error(f"--out {out}: no such folder")
    from contracts.redis_client import REDIS_FAILURES, keys_for

    try:
        client, keys = sync_client(a.redis_url), keys_for(a.redis_url, a.key_prefix)
    except ValueError as e:
        p.error(f"--redis-url / --key-prefix: {e}")
    try:
        report: dict[str, Any] = erase_users(client, keys, users).as_dict()
    except REDIS_FAILURES as e:
        print(f"erase failed: Redis at {a.redis_url}: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
    tombstones, report["exported"] = {tombstone(u) for u in users}, {}
    for out in a.out:
        try:
            with locked(out):
                report["exported"][str(out)] = apply_tombstones(out, tombstones)
        except (OSError, pa.ArrowException) as e:
            print(json.dumps(report, indent=2))
            print(f"erase: rewriting {out} failed ({e}); the next export finishes it", file=sys.stderr)
            return 1
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
