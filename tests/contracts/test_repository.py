"""The model repository: atomic versions and pointer, rollback, retention."""

from __future__ import annotations

import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest

from contracts.bundle import MANIFEST_FILE
from contracts.repository import POINTER_FILE, ModelRepository, RepositoryError


def fake_bundle(tmp: Path, version: str) -> Path:
    folder = tmp / f"src-{version}"
    folder.mkdir()
    (folder / MANIFEST_FILE).write_text(json.dumps({"version": version}))
    (folder / "model.onnx").write_bytes(b"x" * 10)
    return folder


@pytest.fixture
def repo(tmp_path) -> ModelRepository:
    return ModelRepository(tmp_path / "models")


def test_publish_names_the_version_after_the_manifest_and_refuses_to_overwrite(repo, tmp_path):
    assert repo.publish(fake_bundle(tmp_path, "v1")) == "v1"
    assert repo.versions() == ["v1"] and (repo.root / "v1" / "model.onnx").read_bytes() == b"x" * 10
    with pytest.raises(RepositoryError, match="already exists"):
        repo.publish(tmp_path / "src-v1")


@pytest.mark.parametrize("name", ["", ".hidden", "a/b", "current", "-x", "x" * 200])
def test_unsafe_version_names_are_refused(repo, tmp_path, name):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / MANIFEST_FILE).write_text(json.dumps({"version": name}))
    with pytest.raises(RepositoryError, match="version"):
        repo.publish(folder)


def test_half_written_versions_and_temporary_files_are_never_listed(repo, tmp_path):
    repo.publish(fake_bundle(tmp_path, "v1"))
    (repo.root / ".v2.abc").mkdir()  # an export or copy in progress
    (repo.root / "v3").mkdir()  # no manifest yet
    (repo.root / f".{POINTER_FILE}.tmp").write_text("{")
    assert repo.versions() == ["v1"] and repo.current() is None


def test_the_pointer_tracks_history_and_rollback_steps_back(repo, tmp_path):
    for v in ("v1", "v2", "v3"):
        repo.set_current(repo.publish(fake_bundle(tmp_path, v)))
    assert repo.pointer().history == ("v3", "v2", "v1")
    assert repo.rollback().version == "v2"
    assert repo.rollback().version == "v1"
    with pytest.raises(RepositoryError, match="no previous version"):
        repo.rollback()
    assert repo.current() == "v1"


def test_the_pointer_only_names_published_versions(repo, tmp_path):
    repo.set_current(repo.publish(fake_bundle(tmp_path, "v1")))
    with pytest.raises(RepositoryError, match="not published"):
        repo.set_current("v9")
    assert repo.current() == "v1"
    assert [p.name for p in repo.root.iterdir() if p.name.startswith(".")] == []  # no temp left over


def test_a_corrupt_pointer_is_reported_not_guessed(repo, tmp_path):
    repo.set_current(repo.publish(fake_bundle(tmp_path, "v1")))
    (repo.root / POINTER_FILE).write_text("v1")
    with pytest.raises(RepositoryError, match="not a valid pointer"):
        repo.current()


def test_prune_keeps_the_newest_and_whatever_rollback_needs(repo, tmp_path):
    for v in ("v1", "v2", "v3", "v4", "v5"):
        repo.publish(fake_bundle(tmp_path, v))
    repo.set_current("v1")
    repo.set_current("v2")
    assert repo.prune(keep=2) == ["v3"]  # v1 and v2 are the pointer's last two; v4 and v5 the newest
    assert repo.versions() == ["v1", "v2", "v4", "v5"]


def seed_in_a_process(root: str, bundle: str) -> str | None:
    return ModelRepository(Path(root)).seed(Path(bundle))


def test_workers_seeding_an_empty_repository_at_once_all_start_on_the_one_seed(repo, tmp_path):
    bundle = fake_bundle(tmp_path, "demo")
    with ProcessPoolExecutor(6) as pool:  # a server's workers, each seeding as it starts
        seeded = list(pool.map(seed_in_a_process, [str(repo.root)] * 12, [str(bundle)] * 12))
    assert "demo" in seeded and set(seeded) <= {"demo", None}  # None: a current version was already there
    assert repo.versions() == ["demo"] and repo.current() == "demo"
    assert not [p for p in repo.root.iterdir() if p.name.startswith(".demo.")]  # no temporary copies left
    assert repo.seed(fake_bundle(tmp_path, "other")) is None and repo.current() == "demo"
