"""API keys: their format, the entries the service is configured with, and the check of a key.

A key is ``<id>.<secret>``: the id names it (on the access log, the impression record, /metrics),
the secret is 32 random bytes, URL-safe. The service never holds a key itself, only an *entry*
per key, one line ``<id> <scope>[,<scope>…] <sha256 of the whole key, hex>``. Entries are given as
``DIN_API_KEYS`` (separated by ``;`` or newlines) or as a file (``DIN_API_KEYS_FILE``, one per
line, ``#`` comments), so a leaked configuration does not leak a usable key. A key's secret has
256 bits of entropy, so an unsalted SHA-256 is as strong as a slow hash here, and costs a
microsecond a request.

``python -m jobs.api_keys new ID --scopes …`` makes a key and its entry. Rotation: add the new
key's entry beside the old one, move the clients, then remove the old entry; both are valid in
between.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

# What each scope lets a key do. "explain" returns the user's stored history with the scores.
SCOPES = {
    "score": "POST /score",
    "explain": "POST /score with explain: true (returns the user's stored history)",
    "write": "POST /events and POST /profile",
    "admin": "/admin/* (reload, erase)",
}
ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,40}")
_DIGEST = re.compile(r"[0-9a-f]{64}")
# Compared against when the id is unknown, so an unknown id costs what a wrong secret costs.
_DUMMY = hashlib.sha256(b"no such key").digest()


@dataclass(frozen=True)
class KeyEntry:
    id: str
    scopes: frozenset[str]
    digest: bytes  # sha256 of the whole key

    def line(self) -> str:
        return f"{self.id} {','.join(sorted(self.scopes))} {self.digest.hex()}"


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


def new_key(key_id: str, scopes: frozenset[str] | set[str]) -> tuple[str, KeyEntry]:
    """A fresh key and the entry the service is given for it."""
    check_id(key_id)
    check_scopes(scopes)
    key = f"{key_id}.{secrets.token_urlsafe(32)}"
    return key, KeyEntry(key_id, frozenset(scopes), digest(key))


def check_id(key_id: str) -> None:
    if not ID_PATTERN.fullmatch(key_id):
        raise ValueError("a key id is 1 to 40 letters, digits, '_' or '-'")


def check_scopes(scopes: frozenset[str] | set[str]) -> None:
    unknown = sorted(set(scopes) - set(SCOPES))
    if not scopes or unknown:
        raise ValueError(
            f"scopes must be one or more of {', '.join(SCOPES)}; got {', '.join(unknown) or 'none'}"
        )


def parse_entries(text: str) -> dict[str, KeyEntry]:
    """The entries of ``text`` by id. A bad entry is a ValueError naming its position and what is
    wrong with it, never its digest."""
    entries: dict[str, KeyEntry] = {}
    lines = [line.split("#", 1)[0].strip() for line in re.split(r"[;\n]", text)]
    for n, line in enumerate((line for line in lines if line), start=1):
        parts = line.split()
        if len(parts) != 3:
            raise ValueError(
                f"API key entry {n}: expected '<id> <scopes> <sha256 hex>', got {len(parts)} fields"
            )
        key_id, scopes, hexdigest = parts
        try:
            check_id(key_id)
            check_scopes(set(scopes.split(",")))
        except ValueError as e:
            raise ValueError(f"API key entry {n}: {e}") from None
        if not _DIGEST.fullmatch(hexdigest):
            raise ValueError(f"API key entry {n} ({key_id}): the digest must be 64 lowercase hex digits")
        if key_id in entries:
            raise ValueError(f"API key entry {n}: id {key_id} appears twice")
        entries[key_id] = KeyEntry(key_id, frozenset(scopes.split(",")), bytes.fromhex(hexdigest))
    return entries


def verify(entries: Mapping[str, KeyEntry], key: str) -> KeyEntry | None:
    """The entry of ``key``, or None. The secret is compared in constant time (hmac.compare_digest
    on the digests), and an unknown id is compared against a dummy digest all the same."""
    key_id = key.split(".", 1)[0]
    entry = entries.get(key_id)
    expected = entry.digest if entry is not None else _DUMMY
    matches = hmac.compare_digest(digest(key), expected)
    return entry if matches and entry is not None else None
