"""A versioned model repository on disk, readable without torch (the service uses it).

    ROOT/<version>/     one bundle per version (python -m model.export), immutable once there
    ROOT/current        the pointer: JSON {"version", "history", "updated_at", "canary"?}

A version becomes visible only by a rename of a complete folder, and the pointer only by a rename
of a complete file, so a reader never sees half of either. ``history`` lists the versions that
have been current, newest first, so ``history[0]`` is the current version itself; rollback steps
to ``history[1]`` and drops ``history[0]``. ``canary`` (``contracts.canary``), when present, is a second
version on a slice of the users; promoting it makes it current, aborting it drops it, and any other
change of the pointer ends the experiment too. Names starting with "." are
work in progress (export's temporary folders, the pointer's temporary file) and never listed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from contracts.bundle import MANIFEST_FILE
from contracts.canary import Canary, CanaryError, Mode

POINTER_FILE = "current"
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
HISTORY_KEPT = 20  # pointer entries remembered for rollback


class RepositoryError(Exception):
    """The repository cannot do what was asked; the message says why."""


@dataclass(frozen=True)
class Pointer:
    version: str
    history: tuple[str, ...]  # versions that were current, newest first; history[0] == version
    updated_at: str
    canary: Canary | None = None

    @property
    def previous(self) -> str | None:
        return self.history[1] if len(self.history) > 1 else None


def check_version_name(version: str) -> str:
    if not VERSION_PATTERN.match(version) or version == POINTER_FILE:
        raise RepositoryError(
            f"version {version!r} must be 1-128 of letters, digits, '.', '_' or '-', not starting "
            f"with '.', '_' or '-', and not {POINTER_FILE!r}"
        )
    return version


def new_version_name() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S")


def bundle_version(bundle: Path) -> str:
    """The version a bundle folder's manifest names."""
    try:
        return check_version_name(str(json.loads((bundle / MANIFEST_FILE).read_text())["version"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise RepositoryError(f"{bundle} is not a model bundle: {e}") from e


class ModelRepository:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, version: str) -> Path:
        return self.root / check_version_name(version)

    def versions(self) -> list[str]:
        """Published versions, oldest first (by publication time)."""
        if not self.root.is_dir():
            return []
        found = [
            p
            for p in self.root.iterdir()
            if p.is_dir() and VERSION_PATTERN.match(p.name) and (p / MANIFEST_FILE).is_file()
        ]
        return [p.name for p in sorted(found, key=lambda p: (p.stat().st_mtime, p.name))]

    def pointer(self) -> Pointer | None:
        path = self.root / POINTER_FILE
        try:
            d = json.loads(path.read_text())
            canary = Canary.from_json(d["canary"]) if d.get("canary") is not None else None
            return Pointer(str(d["version"]), tuple(d["history"]), str(d["updated_at"]), canary)
        except FileNotFoundError:
            return None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, CanaryError) as e:
            raise RepositoryError(f"{path} is not a valid pointer: {e}") from e

    def current(self) -> str | None:
        p = self.pointer()
        return p.version if p else None

    def current_path(self) -> Path:
        """The bundle folder the pointer names; raises if there is none."""
        version = self.current()
        if version is None:
            raise RepositoryError(
                f"{self.root} has no {POINTER_FILE} pointer: publish a model first "
                "(scripts/redeploy.py, or scripts/quickstart.sh for a demo model)"
            )
        return self.path(version)

    def serving_run(self) -> Path:
        """The training run (a ``model.train --out`` folder) of the version ``current`` names, as
        its manifest records it (``run``; older bundles name only their ``checkpoint``)."""
        bundle = self.current_path()
        try:
            manifest = json.loads((bundle / MANIFEST_FILE).read_text())
            recorded = manifest.get("run") or str(Path(manifest["checkpoint"]).parent)
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise RepositoryError(f"{bundle}: its manifest names no training run: {e}") from e
        run = Path(recorded)
        if not (run / "ckpt.pt").is_file():
            raise RepositoryError(
                f"version {bundle.name} was trained in {run}, which holds no ckpt.pt on this machine; "
                "give --init-from a run folder, or train without it"
            )
        return run

    def publish(self, bundle: Path) -> str:
        """Copies a bundle folder in as the version its manifest names; visible only once complete."""
        version = bundle_version(bundle)
        target = self.path(version)
        exists = RepositoryError(f"version {version} already exists in {self.root}; versions are immutable")
        if target.exists():
            raise exists
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{version}.", dir=self.root))
        try:
            shutil.copytree(bundle, tmp, dirs_exist_ok=True)
            tmp.chmod(0o755)
            try:
                tmp.rename(target)
            except OSError as e:  # another process published the same version meanwhile
                if target.exists():
                    raise exists from e
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return version

    def seed(self, bundle: Path) -> str | None:
        """Publishes ``bundle`` and points ``current`` at it when there is no current version yet;
        None when there was one. Safe when several processes seed at once (a server's workers
        starting together): the version is published once and every one of them finds it."""
        if self.current() is not None:
            return None
        version = bundle_version(bundle)
        try:
            self.publish(bundle)
        except RepositoryError:
            if not self.path(version).exists():
                raise
        if self.current() is None:
            self.set_current(version)
        return version

    def set_current(self, version: str) -> Pointer:
        """Points ``current`` at a published version (pushed onto the history)."""
        old = self.pointer()
        history = (version, *(v for v in (old.history if old else ()) if v != version))
        return self._write_pointer(version, history[:HISTORY_KEPT])

    def rollback(self) -> Pointer:
        """Points ``current`` back at the version that was current before it."""
        old = self.pointer()
        if old is None or old.previous is None:
            raise RepositoryError(f"{self.root}: no previous version to roll back to")
        return self._write_pointer(old.previous, old.history[1:])

    def start_canary(
        self, version: str, percent: float, salt: str | None = None, mode: Mode = "split"
    ) -> Pointer:
        """Serves ``version`` to ``percent`` of the users beside the current version (or, in shadow
        mode, scores them with it without serving it). The salt defaults to the version's name."""
        old = self.pointer()
        if old is None:
            raise RepositoryError(f"{self.root} has no current version to run a canary beside")
        if version == old.version:
            raise RepositoryError(f"{version} is already the current version")
        try:
            canary = Canary(version, float(percent), salt or version, mode, _now())
        except CanaryError as e:
            raise RepositoryError(str(e)) from e
        if not (self.path(version) / MANIFEST_FILE).is_file():
            raise RepositoryError(f"version {version} is not published in {self.root}")
        return self._write_pointer(old.version, old.history, canary)

    def promote(self) -> Pointer:
        """Makes the canary the current version (pushed onto the history), ending the experiment."""
        old = self._with_canary()
        return self.set_current(old.canary.version)  # type: ignore[union-attr]

    def abort(self) -> Pointer:
        """Ends the experiment: the current version serves every user again."""
        old = self._with_canary()
        return self._write_pointer(old.version, old.history)

    def _with_canary(self) -> Pointer:
        old = self.pointer()
        if old is None or old.canary is None:
            raise RepositoryError(f"{self.root}: no canary is running")
        return old

    def prune(self, keep: int) -> list[str]:
        """Deletes all but the ``keep`` newest versions; never one the pointer history names."""
        if keep < 1:
            raise RepositoryError(f"keep must be at least 1, got {keep}")
        pointer = self.pointer()
        protected = set(pointer.history[: max(keep, 2)]) if pointer else set()
        if pointer is not None and pointer.canary is not None:
            protected.add(pointer.canary.version)
        versions = self.versions()
        removed = [v for v in versions[: max(len(versions) - keep, 0)] if v not in protected]
        for v in removed:
            # Rename first, so a half-deleted folder is never listed as a version.
            doomed = self.root / f".deleting.{v}"
            self.path(v).rename(doomed)
            shutil.rmtree(doomed, ignore_errors=True)
        return removed

    def _write_pointer(self, version: str, history: tuple[str, ...], canary: Canary | None = None) -> Pointer:
        if not (self.path(version) / MANIFEST_FILE).is_file():
            raise RepositoryError(f"version {version} is not published in {self.root}")
        pointer = Pointer(version, history, _now(), canary)
        body: dict[str, object] = {
            "version": version,
            "history": list(history),
            "updated_at": pointer.updated_at,
        }
        if canary is not None:
            body["canary"] = canary.to_json()
        fd, tmp = tempfile.mkstemp(prefix=f".{POINTER_FILE}.", dir=self.root)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(body, f)
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.root / POINTER_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return pointer


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")
