"""Forgetting a user in Redis: the history and profile keys deleted, every stream entry of theirs
deleted (impressions, clicks, shadow scores, dead letters), and a tombstone left behind.

The tombstone is the SHA-256 of the user's id as it is written into keys (``contracts.keys.user_part``:
integer 42 and string "42" stay different users), a field of the hash ``{prefix}erased``; the
digest, not the id, so the list of erased users does not itself keep them. The feedback export
reads it: it drops a tombstoned user's records that reach the streams later (an answer still in a
worker's buffer) and rewrites already-exported partitions without them (``jobs.erase``).

The admin route ``POST /admin/erase`` and ``python -m jobs.erase`` both run ``erase_users``. It
reads each stream once for all the users of a call, in pages, so erasing many users at once costs
what erasing one does.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from contracts.ids import RawId
from contracts.keys import Keys, user_part
from contracts.redis_client import SyncClient

PAGE = 1000  # stream entries read per call


def tombstone(user_id: RawId) -> str:
    return hashlib.sha256(user_part(user_id).encode()).hexdigest()


@dataclass
class ErasureReport:
    """What one erasure removed, where."""

    users: int
    keys_deleted: dict[str, int] = field(default_factory=lambda: {"history": 0, "profile": 0})
    stream_entries_deleted: dict[str, int] = field(default_factory=dict)
    tombstones: int = 0  # new ones; an id erased before keeps its first

    def as_dict(self) -> dict[str, Any]:
        return {
            "users": self.users,
            "keys_deleted": self.keys_deleted,
            "stream_entries_deleted": self.stream_entries_deleted,
            "tombstones": self.tombstones,
        }


def erased_users(client: SyncClient, keys: Keys) -> set[str]:
    """The tombstones: the digests of every user erased under this prefix."""
    return {k.decode() if isinstance(k, bytes) else str(k) for k in client.hkeys(keys.erased())}


def erase_users(client: SyncClient, keys: Keys, users: Sequence[RawId]) -> ErasureReport:
    """Tombstones first (a record written while this runs is dropped by the export all the same),
    then the keys, then the streams' entries."""
    report = ErasureReport(len(users))
    now = str(int(time.time())).encode()
    for user in users:
        report.tombstones += int(client.hsetnx(keys.erased(), tombstone(user), now))
        report.keys_deleted["history"] += int(client.delete(keys.history(user)))
        report.keys_deleted["profile"] += int(client.delete(keys.profile(user)))
    matcher = UserMatcher(users)
    streams = {
        "impressions": keys.impressions(),
        "clicks": keys.clicks(),
        "shadow": keys.shadow(),
        "deadletters": (keys.dead_letters(),),
    }
    for kind, names in streams.items():
        report.stream_entries_deleted[kind] = sum(delete_entries(client, name, matcher) for name in names)
    return report


class UserMatcher:
    """Whether a stream entry's record belongs to one of the users. A record that is not JSON (a
    dead letter) is matched on its text, ``"user_id": <id>``, so nothing of theirs is left for
    being malformed."""

    def __init__(self, users: Iterable[RawId]):
        self.parts = {user_part(u) for u in users}
        alternatives = b"|".join(re.escape(p.encode()) for p in sorted(self.parts))
        self.text = re.compile(rb'"user_id"\s*:\s*(?:' + alternatives + rb")\s*[,}]")

    def __call__(self, fields: dict[bytes, bytes]) -> bool:
        raw = fields.get(b"r", b"")
        try:
            record = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return bool(self.text.search(raw))
        if isinstance(record, dict) and "user_id" in record:
            user = record["user_id"]
            return (
                isinstance(user, int | str) and not isinstance(user, bool) and user_part(user) in self.parts
            )
        return bool(self.text.search(raw))


def delete_entries(client: SyncClient, stream: str, matcher: UserMatcher) -> int:
    """Deletes the entries of ``stream`` whose record ``matcher`` takes; how many."""
    deleted, start = 0, "-"
    while True:
        page: Any = client.xrange(stream, min=start, max="+", count=PAGE)
        if not page:
            return deleted
        ids = [entry_id for entry_id, fields in page if fields and matcher(fields)]
        if ids:
            deleted += int(client.xdel(stream, *ids))
        last = page[-1][0].decode() if isinstance(page[-1][0], bytes) else page[-1][0]
        if len(page) < PAGE:
            return deleted
        start = "(" + last
