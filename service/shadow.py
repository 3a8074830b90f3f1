"""Shadow mode: the canary scores an answer's served items again, after the answer has gone, and its
CTRs go to the shadow stream beside the served ones. The canary is never served, so the two
versions are compared on the same traffic at no risk to it (scripts/experiment.py status).

Bounded: at most ``shadow_max_in_flight`` re-scorings wait at once per worker; beyond that an answer
is not shadowed, and counted (``din_shadow_answers_total{result="skipped"}``). The canary scores
with its own vocabulary and history length, so it may differ from the served version in both.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import numpy as np

from service.errors import InvalidInput
from service.impressions import ImpressionLog
from service.metrics import Metrics
from service.runner import ModelRunner

log = logging.getLogger(__name__)


class ShadowScorer:
    def __init__(self, sink: ImpressionLog, metrics: Metrics, max_in_flight: int):
        self.sink, self.metrics, self.max_in_flight = sink, metrics, max_in_flight
        self.tasks: set[asyncio.Task[None]] = set()

    def submit(self, canary: ModelRunner, answer: dict[str, Any], served: list[dict[str, Any]]) -> None:
        """``answer``: request_id, user_id, model_version, history, profile, context and the served
        CTRs (as logged); ``served``: the served candidates, in rank order. Never blocks or raises."""
        if not self.sink.enabled:  # impressions are not logged: no clicks to compare the scores with
            return
        if len(self.tasks) >= self.max_in_flight:
            self.metrics.shadow.labels(result="skipped").inc()
            return
        task = asyncio.create_task(self._score(canary, answer, served), name="shadow")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _score(self, canary: ModelRunner, answer: dict[str, Any], served: list[dict[str, Any]]) -> None:
        features = canary.features
        try:
            encoded = features.encode_rows(served, features.schema.behavior)
            history = answer["history"][-canary.bundle.max_history :] if canary.bundle.max_history else []
            feeds = features.feeds(history, answer["profile"], answer["context"], encoded)
            ctr, _ = await canary.run(feeds, False)
        except InvalidInput as e:  # a candidate the canary's schema cannot take
            self.metrics.shadow.labels(result="failed").inc()
            log.debug("shadow %s cannot score %s: %s", canary.version, answer["request_id"], e)
            return
        except Exception:
            self.metrics.shadow.labels(result="failed").inc()
            log.exception("shadow %s failed on %s", canary.version, answer["request_id"])
            return
        self.metrics.shadow.labels(result="scored").inc()
        self.sink.log(
            {
                "request_id": answer["request_id"],
                "ts": time.time(),
                "user_id": answer["user_id"],
                "model_version": canary.version,
                "served_version": answer["model_version"],
                "candidates": served,
                "ctr": ctr.astype(np.float64),
                "served_ctr": answer["ctr"],
            }
        )

    async def stop(self) -> None:
        """Lets the re-scorings in flight finish (their records go to the sink, flushed after)."""
        await asyncio.gather(*self.tasks, return_exceptions=True)
