"""The compose stack under test: stand-in base images, both images built, the stack up, torn down.

What podman on these machines needs (the header of ../shared/containers/stand-in-images.sh):
images built with ``--format docker`` (podman's OCI format drops HEALTHCHECK), health checks run by
hand (no systemd schedules them, and podman-compose ignores ``condition: service_healthy``), and
the CPU torch wheel taken from a local directory when PyTorch's index is out of reach.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.liveserver import free_port

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
BASE_IMAGES = ("python:3.11-slim-bookworm", "redis:7.2-alpine")
PROJECT = "din-ctr-test"  # its own compose project: never touches a user's stack
IMAGES = {
    "trainer": "din-ctr/trainer:latest",
    "api": "din-ctr/api:latest",
}  # as docker-compose.yml names them
TIMINGS: dict[str, float] = {}
# podman-compose 1.6 warns that podman 4.3 cannot wait for health; podman logs as time="…" level=…
ENGINE_NOTE = re.compile(r'^(WARNING:podman_compose:|time="[^"]*" level=)')


def torch_wheels() -> str | None:
    """A local directory holding the CPU torch wheel the trainer pins, if this machine has one."""
    dirs = os.environ.get("PIP_FIND_LINKS", "").split()
    done = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.find-links"], capture_output=True, text=True
    )
    dirs += done.stdout.split()
    return next((d for d in dirs if glob.glob(os.path.join(d, "torch-2.13.0+cpu-*.whl"))), None)


def why_not() -> str | None:
    if shutil.which("podman") is None:
        return "podman is absent (scripts/ensure_podman.sh installs it where the stand-in script is)"
    if os.geteuid() != 0:
        return "rootful podman is needed (run as root)"
    return None


class Stack:
    """Drives the compose project with podman-compose and podman, as a user would."""

    def __init__(self, port: int, workdir: Path):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.api_key, keys = make_key(workdir / ".env")
        self.env = os.environ | {"DIN_PORT": str(port), "DIN_API_KEYS": keys}
        found = shutil.which("podman-compose", path=str(Path(sys.executable).parent))
        assert found, "podman-compose is a dev dependency: pip install -e '.[dev]'"
        self.compose_bin: str = found

    def compose(
        self, *args: str, check: bool = True, timeout: float = 900
    ) -> subprocess.CompletedProcess[str]:
        cmd = [self.compose_bin, "-p", PROJECT, *args]
        done = subprocess.run(
            cmd, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        return done

    def container(self, service: str) -> str:
        done = podman(
            "ps", "-a", "--format", "{{.Names}}",
            "--filter", f"label=io.podman.compose.project={PROJECT}",
            "--filter", f"label=com.docker.compose.service={service}",
        )  # fmt: skip
        names = done.stdout.split()
        assert len(names) == 1, f"{service}: containers {names}"
        return names[0]

    def has(self, service: str) -> bool:
        try:
            self.container(service)
        except AssertionError:
            return False
        return True

    def exec(self, service: str, *cmd: str, check: bool = True) -> str:
        return podman("exec", self.container(service), *cmd, check=check).stdout

    def inspect(self, service: str) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(podman("inspect", self.container(service)).stdout)[0]
        return info

    def logs(self, service: str) -> str:
        done = podman("logs", self.container(service))
        return done.stdout + done.stderr

    def copy_out(self, service: str, path: str, dest: Path) -> Path:
        podman("cp", f"{self.container(service)}:{path}", str(dest))
        return dest

    def healthcheck(self, service: str, timeout: float = 180) -> bool:
        """Runs the image's HEALTHCHECK until it passes (nothing schedules it here)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if podman("healthcheck", "run", self.container(service), check=False).returncode == 0:
                return True
            time.sleep(1)
        return False

    def up(self) -> None:
        t0 = time.time()
        self.compose("up", "-d")
        assert self.healthcheck("redis"), self.logs("redis")[-3000:]
        assert self.healthcheck("api"), self.logs("api")[-3000:]
        TIMINGS.setdefault("up to healthy, seconds", time.time() - t0)
        self.post("/score", {"user_id": 0, "candidates": []})
        TIMINGS.setdefault("up to first /score, seconds", time.time() - t0)

    def down(self, volumes: bool = False) -> None:
        self.compose("down", *(["-v"] if volumes else []), check=False)

    def run_trainer(self, *args: str) -> subprocess.CompletedProcess[str]:
        t0 = time.time()
        run = ("--profile", "train", "run", "--rm", "-T", "trainer")  # -T: no TTY, none is attached
        done = self.compose(*run, *args, check=False, timeout=1800)
        TIMINGS[f"trainer {' '.join(args)}, seconds"] = time.time() - t0
        # The trainer's own output, without podman-compose's and podman's notes about themselves.
        ours = [line for line in done.stderr.splitlines() if not ENGINE_NOTE.match(line)]
        done.stdout += "\n".join(ours)
        return done

    def request(self, method: str, path: str, body: Any = None, key: str | None = "") -> Any:
        """``key``: the stack's own by default; None sends none."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if key is not None:
            req.add_header("Authorization", f"Bearer {key or self.api_key}")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            # The api's own log says why (a restart, a drain, a traceback): the answer alone rarely does.
            log = "\n".join(self.logs("api").splitlines()[-40:])
            raise AssertionError(f"{method} {path}: {e.code} {e.read()[:2000]!r}\napi log:\n{log}") from e

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)


def make_key(env_file: Path) -> tuple[str, str]:
    """A key made with the command docker-compose.yml names, into a .env file as a user's would be;
    the key, and the DIN_API_KEYS value compose reads from that file."""
    from dotenv import dotenv_values

    cmd = [sys.executable, "-m", "jobs.api_keys", "new", "web", "--scopes", "score,explain,write", "--env"]
    done = subprocess.run([*cmd, str(env_file)], cwd=ROOT, capture_output=True, text=True, check=True)
    value = dotenv_values(env_file)["DIN_API_KEYS"]
    assert value
    return done.stdout.strip(), value


def podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=1800, check=False)
    if check and done.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args[:3])} failed ({done.returncode}):\n{done.stderr[-3000:]}"
        )
    return done


def build(target: str) -> None:
    """One target of the project's Dockerfile, tagged as docker-compose.yml names it."""
    args = ["build", "--format", "docker", "--network", "host", "--target", target, "-t", IMAGES[target]]
    wheels = torch_wheels()
    if wheels:
        args += ["--volume", f"{wheels}:{wheels}:ro", "--build-arg", f"TORCH_INDEX={wheels}"]
    t0 = time.time()
    podman(*args, str(ROOT))
    TIMINGS[f"build {target}, seconds"] = time.time() - t0


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    reason = why_not()
    if reason:
        pytest.skip(reason)
    missing = [i for i in BASE_IMAGES if podman("image", "exists", i, check=False).returncode != 0]
    if missing:
        pytest.skip(
            f"base images {missing} are missing: run scripts/ensure_podman.sh (make test-containers does)"
        )
    for target in IMAGES:  # trainer first: the api image's demo model is trained in a stage built on it
        build(target)
    out = ROOT / "runs"
    out.mkdir(exist_ok=True)
    size = podman("image", "inspect", IMAGES["api"], "--format", "{{.Size}}").stdout
    TIMINGS["api image, MB"] = int(size) / 1e6

    s = Stack(free_port(), tmp_path_factory.mktemp("compose"))
    s.down(volumes=True)  # whatever an interrupted run left
    try:
        s.up()
        yield s
    finally:
        (out / "test-containers-api.log").write_text(s.logs("api") if s.has("api") else "")
        s.down(volumes=True)
        (out / "test-containers.json").write_text(json.dumps(TIMINGS, indent=1) + "\n")
        print("\n" + "\n".join(f"{k}: {v:.1f}" for k, v in TIMINGS.items()))
