"""A screenshot of the explain page (GET /ui) for a user, in a headless Chromium, as docs/ui.png is.

    python scripts/screenshot_ui.py --models models --out docs/ui.png    # the quickstart's model

Starts the service (SERVE_COMMAND) on the given repository with its own Redis key prefix, loads the
SYNTHETIC users' behaviours there (as the quickstart does), and has Chromium render
``/ui?user=...`` with every host but this machine unreachable. Needs chromium (apt-get install
chromium).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import urllib.parse
from pathlib import Path

from contracts.repository import ModelRepository
from devtools.liveserver import ROOT
from devtools.stack import Stack


def browse(url: str, profile: Path, *args: str, size: str = "1100,900") -> subprocess.CompletedProcess[str]:
    """Headless Chromium with every host but this machine unreachable, run until the page is idle."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise FileNotFoundError("chromium is not installed (apt-get install chromium)")
    cmd = [found, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
           f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
           "--virtual-time-budget=15000", f"--window-size={size}", *args, url]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", type=Path, default=ROOT / "models", help="a repository with a current version")
    p.add_argument("--out", type=Path, default=ROOT / "docs/ui.png")
    p.add_argument("--user", default="1")
    p.add_argument("--items", default="2,7,19,33,48,61", help="candidate item ids (category = id % 50)")
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/14")
    p.add_argument("--size", default="1100,1400", help="window width,height")
    a = p.parse_args(argv)
    stack = Stack(ModelRepository(a.models), a.redis_url, "ui-shot:")
    try:
        stack.load_users(users=50, cap=12)
        with stack.serve() as served:
            candidates = [{"item_id": int(i), "category_id": int(i) % 50} for i in a.items.split(",")]
            query = urllib.parse.urlencode({"user": a.user, "candidates": json.dumps(candidates)})
            with tempfile.TemporaryDirectory() as tmp:
                a.out.parent.mkdir(parents=True, exist_ok=True)
                shot = f"--screenshot={a.out.resolve()}"
                done = browse(f"{served.url}/ui?{query}", Path(tmp), shot, size=a.size)
            if done.returncode != 0:
                raise SystemExit(f"chromium failed: {done.stderr[-2000:]}")
    finally:
        stack.clear()
    print(f"wrote {a.out}")
    return 0
