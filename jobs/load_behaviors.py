"""Bulk-load users' recent behaviours (and profiles) into the service's Redis store.

    python scripts/load_behaviors.py --data ../shared/data/amazon-sports
    python scripts/load_behaviors.py --data synthetic --users 4000      # SYNTHETIC demo users

``--data`` is a raw-log folder (``interactions.csv.gz`` + ``items.csv.gz`` [+ ``users.csv.gz``]) or
``synthetic``. Each user's newest ``--cap`` behaviours replace whatever the store held for them,
written in pipelined batches, with the key names, record format and TTL the service uses.
``--redis-url`` may name a Redis Cluster (``redis+cluster://host:port``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.csv as pacsv
import redis
from tqdm import tqdm

from contracts.keys import Keys, encode_profile, encode_value
from contracts.redis_client import SyncClient, keys_for, sync_client
from contracts.settings import tools
from model.logs import IGNORED_PROFILE_COLUMNS, is_raw_log_dir, lookup, read_time_ordered


@dataclass
class Log:
    user: np.ndarray  # [T] grouped by user, oldest first within a user
    item: np.ndarray
    category: np.ndarray
    ts: np.ndarray
    profiles: dict[Any, dict[str, Any]]


def read_log(data: str, n_users: int | None) -> Log:
    if data == "synthetic":
        from model.synthetic import SyntheticSpec, generate_log

        spec = SyntheticSpec(n_users=n_users) if n_users else SyntheticSpec()
        log = generate_log(spec)
        ts = np.arange(len(log.user))
        demo = {u: {"age": int(log.age[u]), "gender": str(log.gender[u])} for u in range(spec.n_users)}
        return Log(log.user, log.item, log.category, ts, demo)
    folder = Path(data)
    if not is_raw_log_dir(folder):
        raise SystemExit(
            f"--data {data}: expected 'synthetic' or a folder with interactions.csv.gz and items.csv.gz"
        )
    log, items = read_time_ordered(folder)
    user = log["user_id"].to_numpy()
    item = log["item_id"].to_numpy()
    ts = log["timestamp"].to_numpy()
    category = lookup(items, "item_id", "category_id", item)
    profiles: dict[Any, dict[str, Any]] = {}
    if (folder / "users.csv.gz").exists():
        for row in pacsv.read_csv(folder / "users.csv.gz").to_pylist():
            profiles[row["user_id"]] = {k: v for k, v in row.items() if k not in IGNORED_PROFILE_COLUMNS}
    if n_users:
        keep = np.isin(user, np.unique(user)[:n_users])
        user, item, category, ts = user[keep], item[keep], category[keep], ts[keep]
    return Log(user, item, category, ts, profiles)


def users(log: Log, cap: int) -> Iterator[tuple[Any, list[bytes]]]:
    """(user, newest ``cap`` records oldest first) for every user."""
    starts = np.flatnonzero(np.r_[True, log.user[1:] != log.user[:-1]])
    ends = np.r_[starts[1:], len(log.user)]
    for s, e in zip(starts, ends, strict=True):
        s = max(s, e - cap)
        records = [
            encode_value({"item_id": _py(i), "category_id": _py(c), "ts": int(t)})
            for i, c, t in zip(log.item[s:e], log.category[s:e], log.ts[s:e], strict=True)
        ]
        yield _py(log.user[s]), records


def _py(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def load(
    client: SyncClient, log: Log, keys: Keys, cap: int, ttl: int, batch: int, progress: bool
) -> tuple[int, int]:
    n_users = len(np.unique(log.user))
    written = 0
    pipe = client.pipeline(transaction=False)
    for k, (user, records) in enumerate(
        tqdm(users(log, cap), total=n_users, disable=not progress, unit="user"), 1
    ):
        key = keys.history(user)
        pipe.delete(key)
        pipe.rpush(key, *records)
        if ttl:
            pipe.expire(key, ttl)
        profile = log.profiles.get(user)
        if profile:
            pipe.hset(keys.profile(user), mapping=encode_profile(profile))
            if ttl:
                pipe.expire(keys.profile(user), ttl)
        written += len(records)
        if k % batch == 0:
            pipe.execute()
    pipe.execute()
    return n_users, written


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--users", type=int, help="load only the first N users")
    env = tools()
    p.add_argument("--redis-url", default=env.redis_url, help="default $DIN_REDIS_URL")
    p.add_argument("--key-prefix", default=env.key_prefix, help="default $DIN_KEY_PREFIX")
    p.add_argument(
        "--cap",
        type=int,
        default=env.history_cap,
        help="behaviours kept per user ($DIN_HISTORY_CAP)",
    )
    p.add_argument(
        "--ttl",
        type=int,
        default=env.history_ttl_seconds,
        help="seconds; 0 = no expiry ($DIN_HISTORY_TTL_SECONDS)",
    )
    p.add_argument("--batch", type=int, default=500, help="users per pipeline round trip")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    if a.cap < 1 or a.batch < 1:
        p.error("--cap and --batch must be >= 1")
    t0 = time.perf_counter()
    log = read_log(a.data, a.users)
    try:
        client, keys = sync_client(a.redis_url), keys_for(a.redis_url, a.key_prefix)
    except ValueError as e:
        p.error(f"--redis-url / --key-prefix: {e}")
    try:
        client.ping()
        n_users, n_records = load(client, log, keys, a.cap, a.ttl, a.batch, not a.no_progress)
    except redis.RedisError as e:
        p.exit(1, f"redis at {a.redis_url}: {e}\n")
    finally:
        client.close()
    label = " (SYNTHETIC)" if a.data == "synthetic" else ""
    seconds = time.perf_counter() - t0
    print(
        f"loaded {n_records} behaviours of {n_users} users{label} into {a.redis_url} under the key prefix "
        f"{a.key_prefix!r} in {seconds:.1f}s"
    )


if __name__ == "__main__":
    main()
