"""Graceful shutdown of a real uvicorn process on SIGTERM, under traffic."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest
import redis

from devtools.liveserver import ROOT, SERVE_COMMAND, free_port, wait_ready
from tests.helpers import REDIS_URL

pytestmark = pytest.mark.slow

BODY = json.dumps({"user_id": 1, "candidates": [{"item_id": i, "category_id": 1} for i in range(50)]})


def get(port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    r = conn.getresponse()
    status, body = r.status, json.loads(r.read())
    conn.close()
    return status, body


def test_sigterm_turns_readiness_off_first_finishes_requests_and_closes_cleanly(models):
    port, prefix = free_port(), f"test:{uuid.uuid4().hex}:"
    env = os.environ | {
        "DIN_MODELS": str(models),
        "DIN_REDIS_URL": REDIS_URL,
        "DIN_KEY_PREFIX": prefix,
        "DIN_SHUTDOWN_DRAIN_SECONDS": "1.5",
        "DIN_MAX_QUEUE_MS": "0",  # 4 back-to-back clients: admission control must not shed them here
    }
    cmd = [sys.executable, *SERVE_COMMAND[1:], "--port", str(port), "--log-level", "info"]
    server = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    answers: list[tuple[float, int | str]] = []
    stop = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        while not stop.is_set():
            try:
                conn.request("POST", "/score", BODY, {"Content-Type": "application/json"})
                r = conn.getresponse()
                r.read()
                answers.append((time.monotonic(), r.status))
            except (OSError, http.client.HTTPException) as e:
                answers.append((time.monotonic(), type(e).__name__))
                conn.close()
                time.sleep(0.05)

    try:
        wait_ready(f"http://127.0.0.1:{port}", server=server)  # type: ignore[arg-type]
        threads = [threading.Thread(target=client) for _ in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.5)
        sent = time.monotonic()
        server.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        status, body = get(port, "/readyz")  # draining: not ready, but still serving
        assert status == 503 and body["status"] == "draining"
        assert get(port, "/healthz")[0] == 200
        code = server.wait(30)
        stop.set()
        for t in threads:
            t.join()
    finally:
        if server.poll() is None:
            server.kill()
        log = server.communicate()[1]
        r = redis.Redis.from_url(REDIS_URL)
        r.delete(*r.keys(f"{prefix}*") or ["-"])
        r.close()

    assert code in (0, -signal.SIGTERM), log  # uvicorn re-raises the signal once it has shut down
    during_drain = [s for t, s in answers if sent < t < sent + 1.4]
    assert during_drain and set(during_drain) == {200}  # served while load balancers move away
    assert not [s for _, s in answers if isinstance(s, int) and s != 200]  # no 5xx, nothing cut off
    order = [log.index(line) for line in ("not ready any more", "Shutting down", "shutdown complete")]
    assert order == sorted(order), log  # readiness first, then uvicorn stops accepting, then cleanup
    assert "redis connections closed" in log
