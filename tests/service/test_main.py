"""The service is importable and buildable without torch (its image has none)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from devtools.liveserver import ROOT


def test_importing_the_service_and_building_the_app_loads_no_torch():
    code = (
        "import sys\n"
        "import service.main, service.__main__\n"
        "service.main.create_app(service.main.Settings(models='/nonexistent'))\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_the_serve_command_turns_onnxruntime_telemetry_off_unless_told_otherwise():
    code = (
        "import os, service.__main__ as serve\n"
        "try:\n    serve.main(['--version'])\nexcept SystemExit:\n    pass\n"
        "print(os.environ['ORT_DISABLE_TELEMETRY'])\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    for preset, want in ((None, "1"), ("0", "0")):
        run_env = env if preset is None else env | {"ORT_DISABLE_TELEMETRY": preset}
        done = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, env=run_env
        )
        assert done.returncode == 0 and done.stdout.split()[-1] == want, done.stderr


@pytest.mark.parametrize(
    ("argv", "env", "want"),
    [([], {}, 1), (["--workers", "3"], {}, 3), (["--workers=2"], {}, 2), ([], {"WEB_CONCURRENCY": "4"}, 4),
     (["--workers", "2"], {"WEB_CONCURRENCY": "4"}, 2), (["--workers", "x"], {}, 1)],
)  # fmt: skip
def test_the_worker_count_is_read_as_uvicorn_reads_it(monkeypatch, argv, env, want):
    from service.__main__ import worker_count

    monkeypatch.delenv("WEB_CONCURRENCY", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert worker_count(argv) == want
