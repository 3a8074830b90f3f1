"""Start the real service (uvicorn) in a subprocess, the way the Dockerfile and quickstart do.

SERVE_COMMAND is the one command line that serves the app; the Dockerfile's CMD, quickstart.sh,
the benchmarks and the tests all run it (tests/containers/test_container_files.py checks they agree).
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVE_COMMAND = ["python", "-m", "service"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float = 180, server: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if server is not None and server.poll() is not None:
            raise RuntimeError(f"the service exited with code {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"the service at {url} did not become ready in {timeout}s")


def start_server(
    env: dict[str, str], workers: int = 1, quiet: bool = True, command: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    """Runs SERVE_COMMAND (or another uvicorn ``command``, e.g. the benchmark's baseline) on a free
    port with ``env``; returns once /readyz answers 200."""
    port = free_port()
    cmd = [sys.executable, *(command or SERVE_COMMAND)[1:], "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers)]
    if quiet:
        cmd += ["--no-access-log", "--log-level", "warning"]
    server = subprocess.Popen(cmd, cwd=ROOT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, server=server)
    except BaseException:
        stop_server(server)
        raise
    return server, url


def stop_server(server: subprocess.Popen[bytes], timeout: float = 30) -> int:
    """SIGTERM, as a container runtime sends it; returns the exit code."""
    server.terminate()
    try:
        return server.wait(timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        return server.wait()
