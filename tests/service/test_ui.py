"""The explain page: served by the service with nothing from elsewhere, and, in a headless Chromium
against a live service with the network cut off, a heatmap of behaviours x ads."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from devtools import screenshot_ui
from devtools.liveserver import start_server, stop_server
from tests.helpers import REDIS_URL, redis_prefix

HISTORY = [(i, i % 50) for i in (3, 14, 15, 92, 65, 35)]
CANDIDATES = [{"item_id": i, "category_id": i % 50} for i in (14, 27, 18, 28)]


def test_the_page_and_its_assets_load_nothing_from_elsewhere(client):
    page = client.get("/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == "default-src 'self'"
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sorted(assets) == ["/ui/ui.css", "/ui/ui.js"]
    for path, kind in (("/ui/ui.js", "text/javascript"), ("/ui/ui.css", "text/css")):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith(kind)
        # no URL to another host: the one absolute URL is the SVG namespace, which is not fetched
        assert re.findall(r"https?://[^\s\"'`]+", r.text) in ([], ["http://www.w3.org/2000/svg"])


def browse(url: str, tmp: Path, *args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("chromium") is None and shutil.which("chromium-browser") is None:
        pytest.skip("chromium is absent (apt-get install chromium; .ci/run installs it)")
    return screenshot_ui.browse(url, tmp / "profile", *args)


@pytest.fixture
def live(models):
    with redis_prefix() as prefix:
        env = os.environ | {"DIN_MODELS": str(models), "DIN_REDIS_URL": REDIS_URL, "DIN_KEY_PREFIX": prefix}
        server, url = start_server(env)
        try:
            events = [
                {"user_id": 7, "item_id": i, "category_id": c, "ts": 100 + k}
                for k, (i, c) in enumerate(HISTORY)
            ]
            req = urllib.request.Request(
                f"{url}/events", json.dumps({"events": events}).encode(), {"Content-Type": "application/json"}
            )
            assert urllib.request.urlopen(req, timeout=30).status == 200
            yield url
        finally:
            stop_server(server)


@pytest.mark.slow
def test_the_page_draws_one_heatmap_cell_per_behaviour_and_ad_with_the_network_off(live, tmp_path):
    query = urllib.parse.urlencode({"user": "7", "candidates": json.dumps(CANDIDATES), "top_k": "4"})
    url = f"{live}/ui?{query}"

    dom = browse(url, tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert 'id="status" role="status" class=""' in dom.stdout  # no error shown
    assert dom.stdout.count('class="cell"') == len(HISTORY) * len(CANDIDATES)
    ranked = re.search(r'<table id="ranked">.*?<tbody>(.*?)</tbody>', dom.stdout, re.S)
    assert ranked is not None and ranked.group(1).count("<tr>") == len(CANDIDATES)

    shot = tmp_path / "ui.png"
    done = browse(url, tmp_path, f"--screenshot={shot}")
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    coloured = ((r - b > 40) & (r - g > 40)) | ((b - r > 40) & (b - g > 20))  # the heatmap's reds and blues
    assert coloured.sum() > 200, "no heatmap cells in the screenshot"
