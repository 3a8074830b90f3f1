"""An online experiment between two model versions: the canary part of the repository's pointer,
and which arm a user is in. One definition, read by the service (to route), by the experiment
script (to attribute) and by the simulator.

    "canary": {"version": "v2", "percent": 10.0, "salt": "v2", "mode": "split", "started_at": "…"}

``split``: users in the canary's slice are served by the canary. ``shadow``: every user is served
by the stable version; the canary also scores the users of its slice off the request path, and
its CTRs are logged, never served.

A user's arm is a stable hash of (salt, user id): the same in every worker and instance and across
restarts, so a user stays in one arm for the whole experiment; a new salt draws a new split. The
id is hashed as JSON, as the service writes it into its keys (42 and "42" are different users).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson

Mode = Literal["split", "shadow"]
MODES: tuple[Mode, ...] = ("split", "shadow")
_SCALE = float(2**64)


class CanaryError(ValueError):
    """A canary setting that cannot be used; the message names it."""


def bucket(salt: str, user_id: int | str) -> float:
    """The user's position in [0, 1), uniform over users for any salt."""
    digest = hashlib.blake2b(orjson.dumps(user_id), digest_size=8, key=salt.encode()).digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclass(frozen=True)
class Canary:
    version: str
    percent: float  # share of users in the canary's arm, (0, 100]
    salt: str
    mode: Mode = "split"
    started_at: str = ""  # ISO time the experiment started: its impressions are the ones after it

    def __post_init__(self) -> None:
        if not 0 < self.percent <= 100:
            raise CanaryError(f"canary percent must be a number in (0, 100], got {self.percent!r}")
        if self.mode not in MODES:
            raise CanaryError(f"canary mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if not isinstance(self.salt, str) or not 1 <= len(self.salt.encode()) <= 64:
            raise CanaryError("canary salt must be a string of 1 to 64 bytes")

    def takes(self, user_id: int | str) -> bool:
        """Whether the user is in the canary's arm."""
        return bucket(self.salt, user_id) * 100 < self.percent

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: Any) -> Canary:
        if not isinstance(d, dict) or not isinstance(d.get("version"), str):
            raise CanaryError("canary must be an object with a version")
        percent = d.get("percent")
        if isinstance(percent, bool) or not isinstance(percent, int | float):
            raise CanaryError(f"canary {d['version']}: percent must be a number, got {percent!r}")
        mode, salt, started = d.get("mode", "split"), d.get("salt"), d.get("started_at", "")
        if not isinstance(started, str) or not isinstance(salt, str):
            raise CanaryError(f"canary {d['version']}: salt and started_at must be strings")
        return cls(d["version"], float(percent), salt, mode, started)
