"""Redis key names, in one place. Values hold raw ids, so a new model version needs no rewrite.

A user id is written into its keys as JSON, as every id in a value is: integer 42 is ``…:42`` and
string "42" is ``…:"42"``, so the two stay different users (the rule of ``service.ids``).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson


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
