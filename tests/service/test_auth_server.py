"""API keys on the real server: the refusal to bind a network without keys, the key id on the
access log, and hostile Authorization headers and bodies sent over the wire."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

import pytest

from contracts.api_keys import new_key
from devtools.liveserver import ROOT, free_port, start_server, stop_server, wait_ready
from devtools.rawfuzz import run_auth_fuzz, run_raw_fuzz

pytestmark = pytest.mark.slow


def service_env(settings, **din: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DIN_", "UVICORN_"))}
    base = {"DIN_MODELS": str(settings.models), "DIN_REDIS_URL": settings.redis_url,
            "DIN_KEY_PREFIX": settings.key_prefix}  # fmt: skip
    return env | base | din


def serve(env: dict[str, str], host: str, port: int) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "service", "--host", host, "--port", str(port), "--log-level", "warning"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.1", "example.org"])
def test_binding_a_network_without_keys_fails_with_one_line(settings, host):
    proc = serve(service_env(settings), host, free_port())
    _, err = proc.communicate(timeout=60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, err
    assert lines[0].startswith(f"refusing to serve on {host} without API keys") and "DIN_API_KEYS" in lines[0]


def test_a_bad_key_file_fails_the_start_with_one_line(settings, tmp_path):
    path = tmp_path / "keys"
    path.write_text("web score\n")
    proc = serve(service_env(settings, DIN_API_KEYS_FILE=str(path)), "127.0.0.1", free_port())
    _, err = proc.communicate(timeout=60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 1 and lines == [
        "DIN_API_KEYS_FILE: API key entry 1: expected '<id> <scopes> <sha256 hex>', got 2 fields"
    ]


@pytest.mark.parametrize("din", [{"DIN_ALLOW_UNAUTHENTICATED": "true"}, {"DIN_API_KEYS": "<entry>"}])
def test_keys_or_the_documented_opt_out_let_it_bind_every_interface(settings, din):
    _, entry = new_key("web", {"score"})
    din = {k: (entry.line() if v == "<entry>" else v) for k, v in din.items()}
    port = free_port()
    proc = serve(service_env(settings, **din), "0.0.0.0", port)
    try:
        wait_ready(f"http://127.0.0.1:{port}", server=proc)
    finally:
        proc.terminate()
        proc.communicate(timeout=60)


def test_the_access_log_names_the_key_id_never_the_key(settings):
    key, entry = new_key("web-frontend", {"score"})
    port = free_port()
    cmd = [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port)]
    env = service_env(settings, DIN_API_KEYS=entry.line())
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", server=proc)
        body = b'{"user_id": 1, "candidates": [{"item_id": 1, "category_id": 1}]}'
        request = urllib.request.Request(f"http://127.0.0.1:{port}/score", body, method="POST")
        request.add_header("Authorization", f"Bearer {key}")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as r:
            assert r.status == 200
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=60)
    line = next(x for x in out.decode().splitlines() if '"POST /score HTTP/1.1" 200' in x)
    assert ' key=web-frontend - "POST /score' in line and key.split(".")[1] not in out.decode()


def test_hostile_authorization_headers_and_bodies_get_4xx_never_5xx(settings):
    key, entry = new_key("fuzz", {"score", "explain", "write"})
    server, url = start_server(service_env(settings, DIN_API_KEYS=entry.line()))
    try:
        auth = run_auth_fuzz(url, 300, key)
        raw = run_raw_fuzz(url, 120, key=key)
    finally:
        stop_server(server)
    assert auth["auth_server_errors"] == auth["auth_let_through"] == 0, auth
    assert auth["auth_echoes"] == auth["auth_bad_error_shape"] == 0, auth
    assert raw["raw_server_errors"] == raw["raw_echoes"] == raw["raw_bad_error_shape"] == 0, raw
    assert (
        set(raw["raw_statuses"]) - {200, 204} and max(raw["raw_statuses"]) < 500
    )  # bodies reached the routes
