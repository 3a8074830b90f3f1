"""The experiment's split: a stable hash of (salt, user id), and the canary in the pointer."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from contracts.canary import Canary, CanaryError, bucket
from contracts.repository import ModelRepository, RepositoryError
from tests.service.test_model_slot import publish_copy

USERS = [*range(5000), *(f"user-{i}" for i in range(5000))]  # 10,000 ids, integers and strings


def test_users_never_change_arms_between_processes_or_calls():
    canary = Canary("v2", 30.0, "salt-a")
    here = [canary.takes(u) for u in USERS]
    assert here == [canary.takes(u) for u in USERS]
    # Another interpreter (another worker, another instance), with its own hash seed.
    code = (
        "import json, sys; from contracts.canary import Canary; c = Canary('v2', 30.0, 'salt-a'); "
        "print(json.dumps([c.takes(u) for u in json.load(sys.stdin)]))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(USERS), capture_output=True, text=True, check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )  # fmt: skip
    assert json.loads(done.stdout) == here


@pytest.mark.parametrize("percent", [1.0, 10.0, 50.0, 90.0])
def test_the_split_matches_percent_within_sampling_error(percent):
    share = np.mean([Canary("v2", percent, "s").takes(u) for u in USERS])
    sigma = np.sqrt(percent / 100 * (1 - percent / 100) / len(USERS))
    assert abs(share - percent / 100) < 4 * sigma


def test_a_new_salt_draws_an_independent_split_and_42_is_not_the_string_42():
    a = np.array([Canary("v2", 50.0, "one").takes(u) for u in USERS])
    b = np.array([Canary("v2", 50.0, "two").takes(u) for u in USERS])
    assert abs(np.mean(a & b) - 0.25) < 4 * np.sqrt(0.25 * 0.75 / len(USERS))  # independent halves
    assert bucket("s", 42) != bucket("s", "42")
    assert all(0 <= bucket("s", u) < 1 for u in USERS[:100])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"version": "v2", "percent": 0, "salt": "s"}, "percent"),
        ({"version": "v2", "percent": 101, "salt": "s"}, "percent"),
        ({"version": "v2", "percent": 5, "salt": "s", "mode": "ab"}, "mode"),
        ({"version": "v2", "percent": 5, "salt": ""}, "salt"),
        ({"version": "v2", "salt": "s"}, "percent"),
        ({"percent": 5}, "version"),
    ],
)
def test_a_bad_canary_spec_is_refused_with_the_field_named(spec, message):
    with pytest.raises(CanaryError, match=message):
        Canary.from_json(spec)


@pytest.fixture
def repo(trained, tmp_path) -> ModelRepository:
    r = ModelRepository(tmp_path / "models")
    r.set_current(r.publish(trained[1]))  # test-v1
    publish_copy(r, trained[1], "test-v2", tmp_path)
    return r


def test_start_promote_and_abort_move_the_pointer(repo):
    started = repo.start_canary("test-v2", 25)
    assert repo.pointer() == started
    assert (started.version, started.canary.version, started.canary.salt) == ("test-v1", "test-v2", "test-v2")
    assert started.canary.started_at and started.history == ("test-v1",)

    aborted = repo.abort()
    assert (aborted.version, aborted.canary, aborted.history) == ("test-v1", None, ("test-v1",))

    repo.start_canary("test-v2", 25, salt="other", mode="shadow")
    promoted = repo.promote()
    assert (promoted.version, promoted.canary, promoted.history) == ("test-v2", None, ("test-v2", "test-v1"))
    assert repo.rollback().version == "test-v1"  # a promotion rolls back like any deployment


def test_any_other_pointer_change_ends_the_experiment_and_prune_keeps_the_canary(repo, trained, tmp_path):
    repo.start_canary("test-v2", 10)
    for i in range(3, 7):
        publish_copy(repo, trained[1], f"test-v{i}", tmp_path)
    assert "test-v2" not in repo.prune(keep=1)  # the canary is protected, like the current version
    assert repo.set_current("test-v6").canary is None  # test-v6: the newest, kept


def test_a_canary_must_be_a_published_version_other_than_the_current(repo):
    with pytest.raises(RepositoryError, match="not published"):
        repo.start_canary("test-v9", 10)
    with pytest.raises(RepositoryError, match="already the current"):
        repo.start_canary("test-v1", 10)
    with pytest.raises(RepositoryError, match="percent"):
        repo.start_canary("test-v2", 150)
    with pytest.raises(RepositoryError, match="no canary"):
        repo.promote()


def test_a_pointer_with_a_damaged_canary_is_reported_not_guessed(repo):
    repo.start_canary("test-v2", 10)
    body = json.loads((repo.root / "current").read_text())
    body["canary"]["percent"] = "lots"
    (repo.root / "current").write_text(json.dumps(body))
    with pytest.raises(RepositoryError, match=r"not a valid pointer.*percent"):
        repo.pointer()
