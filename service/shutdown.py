"""Graceful shutdown on SIGTERM: readiness turns false first, then uvicorn stops accepting, lets
requests in flight finish, and runs the lifespan shutdown (model poll, batchers, Redis pool,
onnxruntime threads, in that order).

uvicorn handles SIGTERM itself. We chain in front of its handler: mark the process draining (so
/readyz answers 503 and load balancers stop sending), keep serving for DIN_SHUTDOWN_DRAIN_SECONDS
while they notice, then hand the signal to uvicorn. Only possible in the main thread, which is
where uvicorn runs the app; elsewhere (TestClient) nothing is installed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("service.shutdown")


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self._previous: Any = None

    def install(self, delay_seconds: float) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)
        self._previous = previous

        def on_sigterm(sig: int, frame: FrameType | None) -> None:
            if self.draining:  # a second SIGTERM: stop waiting
                _call(previous, sig, frame)
                return
            self.draining = True
            log.info("SIGTERM: not ready any more; serving %.1fs more, then shutting down", delay_seconds)
            if delay_seconds > 0:
                loop.call_soon_threadsafe(loop.call_later, delay_seconds, _call, previous, sig, None)
            else:
                _call(previous, sig, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    def uninstall(self) -> None:
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)


def _call(
    handler: Callable[[int, FrameType | None], Any] | int | None, sig: int, frame: FrameType | None
) -> None:
    if callable(handler):
        handler(sig, frame)
    elif handler == signal.SIG_DFL:
        raise SystemExit(128 + sig)
