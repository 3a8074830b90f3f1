"""What the reliability scenarios share: a redis-server of their own, the trained model and its
users (the Suite), the service under test, and report formatting. The scenarios are in
scenarios.py; scripts/reliability.py runs them."""

from __future__ import annotations

import json
import os
import random
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from benchutil import machine
from liveserver import free_port, start_server, stop_server
from load_behaviors import load, read_log
from loadgen import closed_loop, post, run_load
from model.config import DINConfig, TrainConfig
from model.onnx_export import export_bundle
from model.repository import ModelRepository
from model.train import run
from service.keys import Keys

N_CANDIDATES, HISTORY, PREFIX = 200, 50, "rel:"
ADMIN_TOKEN = "reliability-suite-token-0123456789"
CAPACITY_CLIENTS = 4  # back-to-back clients that keep one worker busy without a standing queue


class RedisServer:
    """A redis-server of our own on a spare port, which a scenario may kill and restart; durable, it
    keeps everything acknowledged across a restart (AOF, fsync on every write)."""

    def __init__(self, workdir: Path, durable: bool = False):
        self.port, self.workdir, self.durable = free_port(), workdir, durable
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def persistence(self) -> list[str]:
        return ["--appendonly", "yes", "--appendfsync", "always"] if self.durable else ["--appendonly", "no"]

    def start(self) -> float:
        """Starts it and returns the time (monotonic) it first answered PING."""
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--dir", str(self.workdir), *self.persistence()],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        client = redis.Redis(port=self.port, socket_timeout=0.2, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                client.ping()
                client.close()
                return time.monotonic()
            except redis.RedisError:
                time.sleep(0.01)
        raise RuntimeError(f"redis-server on port {self.port} did not start")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None


@dataclass
class Suite:
    """What the scenarios share: the model repository, a Redis with the demo users, and bodies."""

    workdir: Path
    redis: RedisServer
    repo: ModelRepository
    users: list[int]
    items: list[dict[str, int]]
    capacity_rps: float | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def env(self, **settings: Any) -> dict[str, str]:
        base = {
            "DIN_MODELS": str(self.repo.root),
            "DIN_REDIS_URL": self.redis.url,
            "DIN_KEY_PREFIX": PREFIX,
            "DIN_ADMIN_TOKEN": ADMIN_TOKEN,
        }
        return os.environ | base | {f"DIN_{k.upper()}": str(v) for k, v in settings.items()}

    def score_body(self, i: int) -> bytes:
        r = random.Random(i)
        body = {"user_id": r.choice(self.users), "candidates": r.sample(self.items, N_CANDIDATES)}
        return json.dumps(body).encode()

    def score_request(self, host: str) -> Any:
        bodies = [self.score_body(i) for i in range(256)]
        return lambda i: post("/score", bodies[i % len(bodies)], host)

    def capacity(self, url: str, seconds: float = 8) -> float:
        """Answers per second with as many clients sending back to back as one worker admits."""
        if self.capacity_rps is None:
            clients = CAPACITY_CLIENTS
            run = run_load(closed_loop(url, self.score_request(host_of(url)), clients, seconds))
            self.capacity_rps = len(run.of(200)) / run.seconds
            print(f"capacity at N = {N_CANDIDATES}, L = {HISTORY}: {self.capacity_rps:.0f} requests/s")
        return self.capacity_rps

    def reload_behaviours(self) -> None:
        load_synthetic_behaviours(self.redis.url)


def load_synthetic_behaviours(url: str) -> Any:
    log = read_log("synthetic", None)
    client = redis.Redis.from_url(url)
    load(client, log, Keys(PREFIX), cap=HISTORY, ttl=0, batch=1000, progress=False)
    client.close()
    return log


def host_of(url: str) -> str:
    return url.removeprefix("http://")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def prepare(workdir: Path, epochs: int = 3) -> Suite:
    """Trains and publishes the model, starts Redis and loads the SYNTHETIC users' behaviours."""
    repo = ModelRepository(workdir / "models")
    run(
        DINConfig(),
        TrainConfig(
            data="synthetic", out=str(workdir / "run"), epochs=epochs, progress=False, max_history=HISTORY
        ),
    )
    export_bundle(workdir / "run" / "ckpt.pt", workdir / "v1", version="v1")
    repo.set_current(repo.publish(workdir / "v1"))
    server = RedisServer(workdir)
    server.start()
    log = load_synthetic_behaviours(server.url)
    items = sorted({(int(i), int(c)) for i, c in zip(log.item, log.category, strict=True)})
    return Suite(
        workdir,
        server,
        repo,
        sorted({int(u) for u in log.user}),
        [{"item_id": i, "category_id": c} for i, c in items],
    )


class Service:
    """The service under test, as a context manager; ``pid`` is the serving process (1 worker)."""

    def __init__(self, suite: Suite, **settings: Any):
        self.env = suite.env(**settings)

    def __enter__(self) -> Service:
        self.server, self.url = start_server(self.env, workers=1)
        self.pid = self.server.pid
        return self

    def __exit__(self, *exc: object) -> None:
        stop_server(self.server)


def write_report(out: Path, name: str, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report = {"scenario": name, "machine": machine(), **report}
    (out / f"{name}.json").write_text(json.dumps(report, indent=2))
    print(
        f"== {name}: "
        + ", ".join(f"{k} {fmt(v)}" for k, v in report.items() if k not in ("scenario", "machine"))
    )


def fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)
