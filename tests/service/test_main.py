"""The service is importable and buildable without torch (its image has none)."""

from __future__ import annotations

import subprocess
import sys

from liveserver import ROOT


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
