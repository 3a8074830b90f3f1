"""/metrics of a real server with two worker processes: every scrape, whichever worker answers
it, reads the totals of both (prometheus_client's multiprocess mode, set up by python -m service)."""

from __future__ import annotations

import http.client
import json
import os
import re
import uuid

import pytest

from contracts.repository import ModelRepository
from devtools.liveserver import start_server, stop_server
from tests.helpers import REDIS_URL

pytestmark = pytest.mark.slow
N = 11


def fresh_request(url: str, method: str, path: str, body: str | None = None) -> tuple[int, str]:
    """Over a new connection each time, so the kernel may hand it to either worker."""
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    try:
        conn.request(method, path, body, {"Content-Type": "application/json"} if body else {})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def test_every_scrape_of_two_workers_reads_the_exact_totals(trained, tmp_path):
    repo = ModelRepository(tmp_path / "models")
    repo.set_current(repo.publish(trained[1]))
    env = os.environ | {
        "DIN_MODELS": str(repo.root),
        "DIN_REDIS_URL": REDIS_URL,
        "DIN_KEY_PREFIX": f"test:{uuid.uuid4().hex}:",
        "DIN_MAX_QUEUE_MS": "0",  # judged: the counts, not the machine's speed
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    server, url = start_server(env, workers=2)
    try:
        body = json.dumps({"user_id": 1, "candidates": [{"item_id": 1, "category_id": 1}] * 3})
        for _ in range(N):
            assert fresh_request(url, "POST", "/score", body)[0] == 200
        for _ in range(8):
            status, text = fresh_request(url, "GET", "/metrics")
            assert status == 200
            assert re.search(rf"^din_score_candidates_count {N}\.0$", text, re.M), text
            assert re.search(r'^din_model_info\{version="test-v1"\} 1\.0$', text, re.M)
            assert re.search(r"^din_in_flight 0\.0$", text, re.M)
    finally:
        stop_server(server)
