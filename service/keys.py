"""Redis key names and record formats, in one place. Values hold raw ids, so a new model version
needs no rewrite.

A user id is written into its keys as JSON, as every id in a value is: integer 42 is ``…:42`` and
string "42" is ``…:"42"``, so the two stay different users (the rule of ``service.ids``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

log = logging.getLogger(__name__)


def user_part(user_id: int | str) -> str:
    return str(user_id) if isinstance(user_id, int) else orjson.dumps(user_id).decode()


@dataclass(frozen=True)
class Keys:
    prefix: str

    def history(self, user_id: int | str) -> str:
        """A list of behaviour records (JSON objects of raw ids), oldest first, capped."""
        return f"{self.prefix}hist:{user_part(user_id)}"

    def profile(self, user_id: int | str) -> str:
        """A hash of profile feature -> raw value as JSON (so 25 and "25" stay distinct)."""
        return f"{self.prefix}prof:{user_part(user_id)}"

    def impressions(self) -> str:
        """A stream, one entry per logged /score answer: field ``r``, an impression record."""
        return f"{self.prefix}impressions"

    def shadow(self) -> str:
        """A stream, one entry per answer a shadow canary also scored: field ``r``, a shadow record."""
        return f"{self.prefix}shadow"

    def clicks(self) -> str:
        """A stream, one entry per /events event: field ``r``, a click record."""
        return f"{self.prefix}clicks"


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
