"""A request's deadline: the time after which its work is dropped (503) rather than started late.

Set by admission control (``service.limits``) from DIN_DEADLINE_MS or the client's X-Deadline-Ms
header, and checked before each stage that costs something (the Redis read, the model run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from service.errors import DeadlineExceeded


@dataclass(frozen=True)
class Deadline:
    expires_at: float  # time.monotonic()
    budget_ms: float

    def check(self, stage: str) -> None:
        if time.monotonic() > self.expires_at:
            raise DeadlineExceeded(f"the request's {self.budget_ms:g} ms deadline passed before {stage}")
