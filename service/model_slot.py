"""The serving model and its hot swap, as TF Serving and Triton do it: load -> validate -> warm up
-> swap. A version that fails any step is never served; the old one keeps serving and the failure
is reported in /model, in the /admin/reload response and in din_model_reload_failing.

The swap is one attribute assignment on the event loop. Requests that already hold the old
ModelRunner finish on it; its session is freed when the last of them lets go.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from model.bundle import Bundle, BundleError, load_bundle, session_options
from model.feeds import smoke
from model.repository import ModelRepository, RepositoryError
from service.metrics import Metrics
from service.runner import ModelRunner
from service.settings import Settings

log = logging.getLogger("service.model_slot")

Outcome = Literal["loaded", "unchanged", "failed"]


@dataclass(frozen=True)
class ReloadReport:
    result: Outcome
    serving: str  # the version serving after the attempt
    attempted: str | None  # the version the pointer named
    error: str | None
    at: str


def warm_up(bundle: Bundle, max_candidates: int) -> None:
    """Runs the shapes real traffic brings, so the first requests after a swap do not pay
    onnxruntime's first-run allocations."""
    for n in sorted({1, min(50, max_candidates), min(200, max_candidates)}):
        bundle.run(smoke(bundle.space.schema, n, bundle.max_history), with_attention=n == 1)


class StartupError(Exception):
    """The service cannot start serving; the message names the setting to change."""


class ModelSlot:
    def __init__(self, settings: Settings, executor: ThreadPoolExecutor, metrics: Metrics):
        self.settings, self.executor, self.metrics = settings, executor, metrics
        self.repository = ModelRepository(settings.models)
        self.lock = asyncio.Lock()
        self.last: ReloadReport | None = None
        self.failed_version: str | None = None  # the poll does not retry it until the pointer moves
        self._runner: ModelRunner | None = None
        self._poll: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        # Loads run on their own low-priority thread, so a reload cannot starve the serving threads.
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="model-load", initializer=_lower_priority)

    @property
    def runner(self) -> ModelRunner:
        if self._runner is None:
            raise RuntimeError("ModelSlot.start() has not run")
        return self._runner

    async def start(self) -> None:
        """Loads the current version; at start-up a model that cannot be served is fatal, with
        the setting to change named."""
        seed = self.settings.seed_bundle
        try:
            if seed is not None and self.repository.current() is None:
                seeded = self.repository.publish(seed)
                self.repository.set_current(seeded)
                log.info("empty repository %s: published the seed bundle as %s", self.repository.root, seeded)
        except RepositoryError as e:
            raise StartupError(f"DIN_SEED_BUNDLE={seed}: {e}") from e
        try:
            version = self.repository.current_path().name
        except RepositoryError as e:
            raise StartupError(f"DIN_MODELS={self.settings.models}: {e}") from e
        bundle = await self._in_loader(version)
        self._swap(bundle)
        if self.settings.model_poll_seconds > 0:
            self._poll = asyncio.create_task(self._poll_loop(), name="model-poll")

    async def stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
        await asyncio.gather(*self._retiring, return_exceptions=True)
        self.loader.shutdown(wait=True)
        if self._runner is not None:
            await self._runner.stop()

    async def reload(self, force: bool = False) -> ReloadReport:
        """Serves the version the pointer names. Without ``force``, a version that already failed
        is not retried until the pointer names another."""
        async with self.lock:
            serving = self.runner.version
            try:
                wanted = self.repository.current()
                if wanted is None:
                    raise RepositoryError(f"{self.repository.root} has no current pointer")
            except RepositoryError as e:
                if self.last is not None and self.last.error == str(e) and not force:
                    return self.last  # the poll does not count the same broken pointer every second
                return self._report("failed", None, str(e))
            if wanted == serving:  # also where a rollback of the pointer after a failure lands
                self.failed_version = None
                self.metrics.reload_failing.set(0)
                return ReloadReport("unchanged", serving, wanted, None, _now())
            if wanted == self.failed_version and not force and self.last is not None:
                return self.last
            try:
                bundle = await self._in_loader(wanted)
            except (BundleError, RepositoryError, OSError) as e:
                self.failed_version = wanted
                log.error("reload of %s failed, still serving %s: %s", wanted, serving, e)
                return self._report("failed", wanted, str(e))
            self._swap(bundle)
            log.info("swapped model %s -> %s", serving, wanted)
            return self._report("loaded", wanted, None)

    def status(self) -> dict[str, Any]:
        try:
            pointer: str | None = self.repository.current()
        except RepositoryError as e:
            pointer = f"unreadable: {e}"
        return {
            "version": self.runner.version,
            "pointer": pointer,
            "pid": os.getpid(),
            "last_reload": asdict(self.last) if self.last else None,
            "manifest": self.runner.bundle.manifest,
        }

    async def _in_loader(self, version: str) -> Bundle:
        return await asyncio.get_running_loop().run_in_executor(self.loader, self._load, version)

    def _load(self, version: str) -> Bundle:
        bundle = load_bundle(
            self.repository.path(version).resolve(), session_options(self.settings.ort_intra_threads)
        )
        if bundle.version != version:
            raise BundleError(
                f"{self.repository.path(version)}: its manifest says version {bundle.version!r}, but it is "
                f"published as {version!r}"
            )
        warm_up(bundle, self.settings.max_candidates)
        return bundle

    def _swap(self, bundle: Bundle) -> None:
        new = ModelRunner(bundle, self.executor, self.settings)
        new.start()
        old, self._runner = self._runner, new
        self.failed_version = None
        self.metrics.set_model(bundle.version)
        if old is not None:
            task = asyncio.create_task(old.stop(), name=f"retire-{old.version}")
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    def _report(
        self, result: Literal["loaded", "failed"], attempted: str | None, error: str | None
    ) -> ReloadReport:
        self.last = ReloadReport(result, self.runner.version, attempted, error, _now())
        self.metrics.reloads.labels(result=result).inc()
        self.metrics.reload_failing.set(1 if result == "failed" else 0)
        return self.last

    async def _poll_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.model_poll_seconds)
            try:
                await self.reload()
            except Exception:  # the poll must outlive any one bad attempt
                log.exception("model poll failed")


def _lower_priority(niceness: int = 10) -> None:
    """Lowers the calling thread's CPU priority: on Linux a thread has its own nice value (and an
    unprivileged process cannot raise it back, hence a dedicated thread); elsewhere a no-op."""
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
