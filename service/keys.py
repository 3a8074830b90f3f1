"""Redis key names, in one place. Values hold raw ids, so a new model version needs no rewrite."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Keys:
    prefix: str

    def history(self, user_id: int | str) -> str:
        """A list of behaviour records (JSON objects of raw ids), oldest first, capped."""
        return f"{self.prefix}hist:{user_id}"

    def profile(self, user_id: int | str) -> str:
        """A hash of profile feature -> raw value as JSON (so 25 and "25" stay distinct)."""
        return f"{self.prefix}prof:{user_id}"
