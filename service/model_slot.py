"""The serving model and its hot swap, as TF Serving and Triton do it: load -> validate -> warm up
-> swap. A version that fails any step is never served; the old one keeps serving and the failure
is reported in /model, in the /admin/reload response and in din_model_reload_failing.

The swap is one attribute assignment on the event loop. Requests that already hold the old
ModelRunner finish on it; its session is freed when the last of them lets go.

With a canary in the pointer (``contracts.canary``) the slot holds two versions, each loaded, warmed up
and swapped the same way, and ``route`` sends each user to their arm. Promotion hands the canary's
warm runner to the stable arm: nothing is loaded at the moment traffic moves.
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

from contracts.bundle import Bundle, BundleError, load_bundle, session_options
from contracts.canary import Canary
from contracts.feeds import smoke
from contracts.repository import ModelRepository, Pointer, RepositoryError
from service.metrics import Metrics
from service.runner import ModelRunner
from service.settings import Settings

log = logging.getLogger("service.model_slot")

Outcome = Literal["loaded", "unchanged", "failed"]


@dataclass(frozen=True)
class ReloadReport:
    result: Outcome
    serving: str  # the version serving after the attempt
    attempted: str | None  # the version the pointer named (or its canary, when that one failed)
    error: str | None
    at: str
    canary: str | None = None  # the canary version loaded after the attempt


@dataclass(frozen=True)
class Arm:
    """The canary: its place in the pointer and its loaded version."""

    spec: Canary
    runner: ModelRunner


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
        self._canary: Arm | None = None
        self._poll: asyncio.Task[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        # Loads run on their own low-priority thread, so a reload cannot starve the serving threads.
        self.loader = ThreadPoolExecutor(1, thread_name_prefix="model-load", initializer=_lower_priority)

    @property
    def runner(self) -> ModelRunner:
        if self._runner is None:
            raise RuntimeError("ModelSlot.start() has not run")
        return self._runner

    @property
    def canary(self) -> Arm | None:
        return self._canary

    def route(self, user_id: int | str) -> tuple[ModelRunner, ModelRunner | None]:
        """The runner that answers this user, and the one that shadows the answer (or None)."""
        stable, arm = self.runner, self._canary
        if arm is None or not arm.spec.takes(user_id):
            return stable, None
        if arm.spec.mode == "split":
            return arm.runner, None
        return stable, arm.runner

    async def start(self) -> None:
        """Loads the current version; at start-up a model that cannot be served is fatal, with
        the setting to change named."""
        seed = self.settings.seed_bundle
        try:
            seeded = self.repository.seed(seed) if seed is not None else None
            if seeded is not None:
                log.info("empty repository %s: seeded with the bundle %s", self.repository.root, seeded)
        except RepositoryError as e:
            raise StartupError(f"DIN_SEED_BUNDLE={seed}: {e}") from e
        try:
            version = self.repository.current_path().name
            pointer = self.repository.pointer()
        except RepositoryError as e:
            raise StartupError(f"DIN_MODELS={self.settings.models}: {e}") from e
        self._swap(self._runner_for(await self._in_loader(version)))
        if pointer is not None and pointer.canary is not None:
            await self.reload()  # a canary that fails to load is reported, not fatal: stable serves all
        if self.settings.model_poll_seconds > 0:
            self._poll = asyncio.create_task(self._poll_loop(), name="model-poll")

    async def stop(self) -> None:
        if self._poll is not None:
            self._poll.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poll
        await asyncio.gather(*self._retiring, return_exceptions=True)
        self.loader.shutdown(wait=True)
        for runner in (self._runner, self._canary.runner if self._canary else None):
            if runner is not None:
                await runner.stop()

    async def reload(self, force: bool = False) -> ReloadReport:
        """Serves the versions the pointer names: the current one, and its canary if any. Without
        ``force``, a version that already failed is not retried until the pointer names another."""
        async with self.lock:
            try:
                pointer = self.repository.pointer()
                if pointer is None:
                    raise RepositoryError(f"{self.repository.root} has no current pointer")
            except RepositoryError as e:
                if self.last is not None and self.last.error == str(e) and not force:
                    return self.last  # the poll does not count the same broken pointer every second
                return self._report("failed", None, str(e))
            before = (self.runner.version, self._canary)
            failure = await self._serve_stable(pointer.version, force)
            if failure is None:
                failure = await self._serve_canary(pointer, force)
            if failure is not None:
                return failure
            self.failed_version = None
            if before == (self.runner.version, self._canary):  # also where a rollback after a failure lands
                self.metrics.reload_failing.set(0)
                return ReloadReport(
                    "unchanged", self.runner.version, pointer.version, None, _now(), self._arm()
                )
            return self._report("loaded", pointer.version, None)

    async def _serve_stable(self, wanted: str, force: bool) -> ReloadReport | None:
        serving = self.runner.version
        if wanted == serving:
            return None
        arm = self._canary
        if arm is not None and arm.runner.version == wanted:  # a promotion: the canary is loaded and warm
            self._canary = None
            self._swap(arm.runner)
            log.info("promoted canary %s (was serving %s)", wanted, serving)
            return None
        if wanted == self.failed_version and not force and self.last is not None:
            return self.last
        try:
            bundle = await self._in_loader(wanted)
        except (BundleError, RepositoryError, OSError) as e:
            self.failed_version = wanted
            log.error("reload of %s failed, still serving %s: %s", wanted, serving, e)
            return self._report("failed", wanted, str(e))
        self._swap(self._runner_for(bundle))
        log.info("swapped model %s -> %s", serving, wanted)
        return None

    async def _serve_canary(self, pointer: Pointer, force: bool) -> ReloadReport | None:
        spec, arm = pointer.canary, self._canary
        if spec is None or spec.version == self.runner.version:
            if arm is not None:
                self._canary = None
                self._retire(arm.runner)
                log.info("canary %s ended; %s serves every user", arm.runner.version, self.runner.version)
            return None
        if arm is not None and arm.runner.version == spec.version:
            if arm.spec != spec:
                self._canary = Arm(spec, arm.runner)  # a new share, salt or mode: nothing to load
            return None
        if spec.version == self.failed_version and not force and self.last is not None:
            return self.last
        try:
            bundle = await self._in_loader(spec.version)
        except (BundleError, RepositoryError, OSError) as e:
            self.failed_version = spec.version
            if arm is not None:
                self._canary = None
                self._retire(arm.runner)
            log.error(
                "canary %s failed to load; %s serves every user: %s", spec.version, self.runner.version, e
            )
            return self._report("failed", spec.version, str(e))
        runner = self._runner_for(bundle)
        self._canary = Arm(spec, runner)
        if arm is not None:
            self._retire(arm.runner)
        log.info("canary %s on %.4g%% of users (%s)", spec.version, spec.percent, spec.mode)
        self.metrics.set_models(self._loaded())
        return None

    def status(self) -> dict[str, Any]:
        try:
            pointer: str | None = self.repository.current()
        except RepositoryError as e:
            pointer = f"unreadable: {e}"
        arm = self._canary
        return {
            "version": self.runner.version,
            "canary": None if arm is None else arm.spec.to_json(),
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

    def _runner_for(self, bundle: Bundle) -> ModelRunner:
        runner = ModelRunner(bundle, self.executor, self.settings)
        runner.start()
        return runner

    def _swap(self, new: ModelRunner) -> None:
        old, self._runner = self._runner, new
        self.failed_version = None
        self.metrics.set_models(self._loaded())
        if old is not None:
            self._retire(old)

    def _retire(self, runner: ModelRunner) -> None:
        """Stops a runner once the requests holding it are done (its own stop waits for them)."""
        self.metrics.set_models(self._loaded())
        task = asyncio.create_task(runner.stop(), name=f"retire-{runner.version}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _loaded(self) -> set[str]:
        return {r.version for r in (self._runner, self._canary.runner if self._canary else None) if r}

    def _arm(self) -> str | None:
        return self._canary.runner.version if self._canary else None

    def _report(
        self, result: Literal["loaded", "failed"], attempted: str | None, error: str | None
    ) -> ReloadReport:
        self.last = ReloadReport(result, self.runner.version, attempted, error, _now(), self._arm())
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
