"""Redis key names and record formats, in one place. Values hold raw ids, so a new model version
needs no rewrite.

A user id is written into its keys as JSON, as every id in a value is: integer 42 is ``…:42`` and
string "42" is ``…:"42"``, so the two stay different users (the rule of ``contracts.ids``).
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

log = logging.getLogger(__name__)


def user_part(user_id: int | str) -> str:
    return str(user_id) if isinstance(user_id, int) else orjson.dumps(user_id).decode()


# A cluster spreads each stream over this many keys, their hash slots evenly spaced, so that every
# master takes a share of the log's writes. Fixed, so the service and the readers agree by
# construction.
STREAM_SHARDS = 16


def _shard_tags(n: int) -> tuple[str, ...]:
    """A hash tag per shard whose slot falls in the shard's 1/n of the 16384 slots."""
    width = REDIS_CLUSTER_HASH_SLOTS // n
    tags = []
    for k in range(n):
        tags.append(
            next(t for t in (f"{k}.{j}" for j in range(1_000_000)) if key_slot(t.encode()) // width == k)
        )
    return tuple(tags)


@dataclass(frozen=True)
class Keys:
    """Key names under a prefix. On a Redis Cluster (``cluster``) a user's keys share a hash tag,
    ``din:hist:{42}`` and ``din:prof:{42}``, so one pipeline reads both from one node; each stream is
    ``STREAM_SHARDS`` keys, ``din:impressions:{<tag>}``. On one server the names have no braces."""

    prefix: str
    cluster: bool = False

    def __post_init__(self) -> None:
        if self.cluster and ("{" in self.prefix or "}" in self.prefix):
            raise ValueError("a key prefix for a Redis Cluster must not contain { or }: it is not a hash tag")

    def _user(self, kind: str, user_id: int | str) -> str:
        part = user_part(user_id)
        return f"{self.prefix}{kind}:{{{part}}}" if self.cluster else f"{self.prefix}{kind}:{part}"

    def history(self, user_id: int | str) -> str:
        """A list of behaviour records (JSON objects of raw ids), oldest first, capped."""
        return self._user("hist", user_id)

    def profile(self, user_id: int | str) -> str:
        """A hash of profile feature -> raw value as JSON (so 25 and "25" stay distinct)."""
        return self._user("prof", user_id)

    def _streams(self, name: str) -> tuple[str, ...]:
        if not self.cluster:
            return (f"{self.prefix}{name}",)
        return tuple(f"{self.prefix}{name}:{{{tag}}}" for tag in SHARD_TAGS)

    def impressions(self) -> tuple[str, ...]:
        """The stream's keys: one entry per logged /score answer, field ``r``, an impression record."""
        return self._streams("impressions")

    def shadow(self) -> tuple[str, ...]:
        """The stream's keys: one entry per answer a shadow canary also scored, field ``r``, a
        shadow record."""
        return self._streams("shadow")

    def clicks(self) -> tuple[str, ...]:
        """The stream's keys: one entry per /events event, field ``r``, a click record."""
        return self._streams("clicks")

    def dead_letters(self) -> str:
        """A stream of the feedback records the exporter could not use, each with its reason:
        fields ``stream`` and ``id`` (where it was), ``kind``, ``reason`` and ``r`` (the record)."""
        return f"{self.prefix}deadletters"

    def dead_letter_counts(self) -> str:
        """A hash: kind -> how many records the exporter set aside (the stream itself is capped)."""
        return f"{self.prefix}deadletters:counts"

    def erased(self) -> str:
        """A hash: SHA-256 of an erased user's id part -> when (``contracts.erasure``)."""
        return f"{self.prefix}erased"

    def user_shard(self, user_id: int | str) -> int:
        """The shard of a user's clicks: always the same one, so they stay in order."""
        return zlib.crc32(user_part(user_id).encode()) % len(SHARD_TAGS) if self.cluster else 0


SHARD_TAGS = _shard_tags(STREAM_SHARDS)


def encode_value(value: Any) -> bytes:
    """A behaviour record (a JSON object of raw ids) or one profile value, as stored."""
    return orjson.dumps(value)


def decode_value(raw: bytes | str) -> Any:
    """A stored value; one that is not JSON (written by hand, or damaged) reads as None, which the
    caller skips or treats as a missing feature, instead of failing every request of that user."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        log.warning("skipping a stored value that is not JSON")
        return None


def decode_history(raws: Sequence[bytes | str]) -> list[dict[str, Any]]:
    """A history list as stored, oldest first; records that are not JSON objects are skipped."""
    return [r for r in map(decode_value, raws) if isinstance(r, dict)]


def encode_profile(fields: Mapping[str, Any]) -> Mapping[Any, bytes]:  # Any: redis-py's key type
    return {k: encode_value(v) for k, v in fields.items()}


# The feedback records: versioned, so a reader refuses a format it does not know. An impression
# record is one /score answer, its features exactly as scored, the served items as columns in rank
# order (rank = position + 1):
#   {"schema": 2, "request_id", "ts" (server time, s), "user_id", "model_version", "degraded",
#    "key_id" (the caller's API key id, "-" without keys; absent in older records),
#    "fields": the behaviour fields scored, "history": [records as read, oldest first],
#    "profile": {feature: value or null}, "context": {feature: value},
#    "candidates": [each served candidate as sent], "ctr": [its served CTR],
#    with exploration also "propensity": [P(shown in that slot)], "explored": [bool]}
# A shadow record is a shadow canary's scores of one answer's served items, in the answer's order:
#   {"schema": 2, "request_id", "ts", "user_id", "model_version" (the canary), "served_version",
#    "candidates": [as served], "ctr": [the canary's CTR], "served_ctr": [the answer's CTR]}
# Schema 1 held "items": [{"rank", "ctr", "candidate", "propensity"?, "explored"?}]; it is still read.
# A click record is one /events event:
#   {"schema": 2, "user_id", "item_id", "ts" (the event's), "at" (server time, s), "request_id" or null}
FEEDBACK_SCHEMA = 2
READABLE_SCHEMAS = (1, 2)


def encode_feedback(record: Mapping[str, Any]) -> bytes:
    """An impression or click record, stamped with the schema version. Numpy arrays (the served
    CTRs, propensities and explored flags) are written as JSON arrays."""
    return orjson.dumps({"schema": FEEDBACK_SCHEMA, **record}, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_feedback(raw: bytes | str) -> dict[str, Any]:
    """An impression or click record in the current layout; ValueError for one of a format this
    code does not read."""
    record = orjson.loads(raw)
    if not isinstance(record, dict) or record.get("schema") not in READABLE_SCHEMAS:
        raise ValueError(f"not a feedback record of schema {' or '.join(map(str, READABLE_SCHEMAS))}")
    if record["schema"] == 1 and "items" in record:
        items = record.pop("items")
        record["candidates"] = [i["candidate"] for i in items]
        record["ctr"] = [i["ctr"] for i in items]
        if any("propensity" in i for i in items):
            record["propensity"] = [i.get("propensity", 1.0) for i in items]
            record["explored"] = [i.get("explored", False) for i in items]
    return record
