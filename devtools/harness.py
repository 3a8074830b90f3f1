"""What the reliability scenarios share: a redis-server of their own, the trained model and its
users (the Suite), the service under test, and report formatting. The scenarios are in
scenarios.py; scripts/reliability.py runs them."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from contracts.repository import ModelRepository
from devtools.benchutil import machine
from devtools.loadgen import closed_loop, post, run_load
from devtools.stack import RedisServer, Stack
from model.config import DINConfig, TrainConfig
from model.onnx_export import export_bundle
from model.train import run

N_CANDIDATES, HISTORY, PREFIX = 200, 50, "rel:"
ADMIN_TOKEN = "reliability-suite-token-0123456789"
CAPACITY_CLIENTS = 4  # back-to-back clients that keep one worker busy without a standing queue


@dataclass
class Suite:
    """What the scenarios share: the stack (the model repository, a Redis of its own with the demo
    users), and the bodies they send."""

    workdir: Path
    redis: RedisServer
    stack: Stack
    users: list[int]
    items: list[dict[str, int]]
    capacity_rps: float | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    @property
    def repo(self) -> ModelRepository:
        return self.stack.repo

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
        self.stack.load_users(cap=HISTORY)


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
    stack = Stack(repo, server.url, PREFIX, ADMIN_TOKEN)
    log = stack.load_users(cap=HISTORY)
    items = sorted({(int(i), int(c)) for i, c in zip(log.item, log.category, strict=True)})
    return Suite(
        workdir,
        server,
        stack,
        sorted({int(u) for u in log.user}),
        [{"item_id": i, "category_id": c} for i, c in items],
    )


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
