"""A service under test, assembled the way a user deploys one: a model repository, a Redis (a URL
and a key prefix of its own), users' behaviours loaded with the bulk loader, and the service started
with ``SERVE_COMMAND`` and ``DIN_*`` settings. The one way the reliability suite, the simulator,
the benchmarks and the screenshots assemble one.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis

from contracts.redis_client import keys_for, sync_client
from contracts.repository import ModelRepository
from devtools.benchutil import delete_prefix
from devtools.liveserver import free_port, start_server, stop_server
from jobs.load_behaviors import Log, load, read_log

# redeploy's options that let any new version through its gate: for runs about the mechanics
# around it (a scenario under load, a canary meant to be judged online, a test on data too small
# for the verdict to mean anything), never for the loop itself.
ANY_VERDICT = (
    "--gauc-margin",
    "1",
    "--logloss-margin",
    "100",
    "--calibration-margin",
    "100",
    "--shift-margin",
    "1e9",
)


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
class Served:
    """A running service: its address and the serving process (the parent, with several workers)."""

    url: str
    pid: int


@dataclass
class Stack:
    repo: ModelRepository
    redis_url: str
    prefix: str
    admin_token: str | None = None

    def env(self, **settings: Any) -> dict[str, str]:
        """The environment of a service (or a command) on this stack, with ``settings`` as DIN_*."""
        base = {
            "DIN_MODELS": str(self.repo.root),
            "DIN_REDIS_URL": self.redis_url,
            "DIN_KEY_PREFIX": self.prefix,
        }
        if self.admin_token is not None:
            base["DIN_ADMIN_TOKEN"] = self.admin_token
        return os.environ | base | {f"DIN_{k.upper()}": str(v) for k, v in settings.items()}

    @contextmanager
    def serve(
        self,
        workers: int = 1,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        **settings: Any,
    ) -> Iterator[Served]:
        """The service (or another uvicorn ``command`` with its own ``env``) until the block ends."""
        server, url = start_server(env if env is not None else self.env(**settings), workers, command=command)
        try:
            yield Served(url, server.pid)
        finally:
            stop_server(server)

    def load_users(self, data: str = "synthetic", users: int | None = None, cap: int = 100) -> Log:
        """Each user's newest ``cap`` behaviours (and profile) into Redis, as the bulk loader does."""
        log = read_log(data, users)
        client = sync_client(self.redis_url)
        try:
            load(
                client, log, keys_for(self.redis_url, self.prefix), cap=cap, ttl=0, batch=1000, progress=False
            )
        finally:
            client.close()
        return log

    def clear(self) -> None:
        """Deletes every key under the prefix."""
        delete_prefix(self.redis_url, self.prefix)
