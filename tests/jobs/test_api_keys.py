"""python3 -m jobs.api_keys: keys made, stored as entries the service reads, revoked; stdlib only."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path

import pytest

from contracts.api_keys import verify
from jobs.api_keys import main, read_entries
from service.auth import KeyRing

ROOT = Path(__file__).resolve().parents[2]


def make(argv: list[str], capsys) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out.strip()


def test_a_key_in_a_key_file_is_accepted_by_the_service_until_revoked(tmp_path, capsys):
    path = tmp_path / "api-keys"
    web = make(["new", "web", "--scopes", "score,write", "--file", str(path)], capsys)
    ops = make(["new", "ops", "--scopes", "admin", "--file", str(path)], capsys)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and web not in path.read_text()
    ring = KeyRing(None, path)
    assert verify(ring.entries(), web).scopes == {"score", "write"}  # type: ignore[union-attr]
    assert verify(ring.entries(), ops).scopes == {"admin"}  # type: ignore[union-attr]
    assert make(["list", "--file", str(path)], capsys) == "web\tscore,write\nops\tadmin"
    assert main(["revoke", "web", "--file", str(path)]) == 0
    assert verify(KeyRing(None, path).entries(), web) is None


def test_a_key_in_an_env_file_keeps_the_other_variables(tmp_path, capsys):
    env = tmp_path / ".env"
    env.write_text("DIN_ADMIN_TOKEN=abc\n")
    first = make(["new", "web", "--scopes", "score", "--env", str(env)], capsys)
    second = make(["new", "web-2", "--scopes", "score", "--env", str(env)], capsys)
    text = env.read_text()
    assert text.startswith("DIN_ADMIN_TOKEN=abc\n") and text.count("DIN_API_KEYS=") == 1
    entries = read_entries(None, env)
    assert verify(entries, first) is not None and verify(entries, second) is not None


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["new", "web", "--scopes", "fly"], "scopes must be one or more of"),
        (["new", "w e", "--scopes", "score"], "a key id is"),
        (["revoke", "nobody", "--file", "/dev/null"], "no key named nobody"),
    ],
)
def test_bad_arguments_get_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_it_runs_without_the_projects_dependencies(tmp_path):
    """-S: no site-packages, as with a system python3 beside a compose file."""
    done = subprocess.run([sys.executable, "-S", "-m", "jobs.api_keys", "new", "web", "--scopes", "score"],
                          cwd=ROOT, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("web.") and "entry (for DIN_API_KEYS" in done.stderr
