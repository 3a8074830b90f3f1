"""A real Redis Cluster of local processes on spare ports, for the tests and the benchmarks:
``--masters`` masters with ``--replicas`` replicas each, made by ``redis-cli --cluster create``.

    python scripts/redis_cluster.py --dir runs/cluster      # prints its URL; Ctrl-C stops it
"""

from __future__ import annotations

import argparse
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis

NODE_TIMEOUT_MS = 1000  # how long a master may be silent before its replica takes over


def cluster_ports(n: int) -> list[int]:
    """Spare ports whose cluster bus ports (port + 10000, so at most 55535) are spare too."""
    rng, ports = random.Random(), list[int]()
    while len(ports) < n:
        port = rng.randrange(20000, 45000)
        if port not in ports and all(_spare(p) for p in (port, port + 10000)):
            ports.append(port)
    return ports


def _spare(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class LocalCluster:
    def __init__(self, workdir: Path, masters: int = 3, replicas: int = 1):
        self.workdir, self.masters, self.replicas = workdir, masters, replicas
        self.ports = cluster_ports(masters * (1 + replicas))
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.ports[0]}"

    def start_node(self, port: int) -> None:
        d = self.workdir / str(port)
        d.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(d),
             "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
             "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
             "--logfile", str(d / "redis.log")],
        )  # fmt: skip
        node = redis.Redis(port=port, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                node.ping()
                break
            except redis.RedisError:
                if time.monotonic() > deadline or self.procs[port].poll() is not None:
                    log = (d / "redis.log").read_text()[-500:] if (d / "redis.log").exists() else ""
                    raise RuntimeError(f"redis-server on port {port} did not start: {log}") from None
                time.sleep(0.02)
        node.close()

    def start(self) -> LocalCluster:
        """Starts the nodes and joins them; if any step fails, stops what it started."""
        try:
            for port in self.ports:
                self.start_node(port)
            subprocess.run(
                ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", str(self.replicas), "--cluster-yes"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )  # fmt: skip
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def node(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=2)

    def wait_healthy(self, timeout: float = 30) -> None:
        """Until every running node says the cluster is ok and agrees on who the masters are."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if all(self.node(p).cluster("info")["cluster_state"] == "ok" for p in self.procs) and (
                    len({tuple(sorted(self.master_ports(p))) for p in self.procs}) == 1
                ):
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the cluster did not become healthy")

    def master_ports(self, via: int | None = None) -> list[int]:
        nodes = self.node(via or next(iter(self.procs))).cluster("nodes")
        return sorted(
            int(addr.split("@")[0].rsplit(":", 1)[1])
            for addr, n in nodes.items()
            if "master" in n["flags"] and "fail" not in n["flags"] and n["slots"]
        )

    def replica_of(self, master_port: int) -> int:
        """The port of a replica that follows ``master_port``."""
        for port in self.procs:
            info = self.node(port).info("replication")
            if info["role"] == "slave" and int(info["master_port"]) == master_port:
                return port
        raise RuntimeError(f"no replica follows {master_port}")

    def failover(self, master_port: int) -> int:
        """A manual failover: the master's replica takes over once it has every write (``CLUSTER
        FAILOVER`` on the replica). Returns the new master's port once the cluster agrees."""
        replica = self.replica_of(master_port)
        self.node(replica).execute_command("CLUSTER FAILOVER")
        deadline = time.monotonic() + 30
        while replica not in self.master_ports(replica) or master_port in self.master_ports(master_port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the failover of {master_port} to {replica} did not finish")
            time.sleep(0.05)
        self.wait_healthy()
        return replica

    def flush(self) -> None:
        for port in self.master_ports():
            self.node(port).flushall()

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.kill()
            proc.wait()
        self.procs.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, default=Path("runs/cluster"))
    p.add_argument("--masters", type=int, default=3)
    p.add_argument("--replicas", type=int, default=1)
    a = p.parse_args()
    cluster = LocalCluster(a.dir, a.masters, a.replicas)
    stop = {signal.SIGINT, signal.SIGTERM}
    try:
        cluster.start()
        # Blocked only now, so the servers do not inherit the mask; sigwait then takes the signal.
        signal.pthread_sigmask(signal.SIG_BLOCK, stop)
        print(cluster.url, flush=True)
        signal.sigwait(stop)
    finally:
        cluster.stop()
