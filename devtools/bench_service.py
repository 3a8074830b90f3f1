"""HTTP benchmark of the real service (uvicorn) on real Redis, driven by wrk on loopback.

    python scripts/bench_service.py --run runs/bench_train/amazon-sports/DIN_default \\
        --json runs/bench_service.json --png runs/bench_service.png --readme docs/benchmarks.md
    python scripts/bench_service.py --quick     # N = 200 at concurrency 1 and 16 only
    python scripts/bench_service.py --quick --no-baseline --microbatch-ms 0 --rounds 24 --seconds 2
                                                # the impression log's cost, in paired rounds

Loads amazon-sports users into Redis (DB 13, prefix ``bench:``; removed afterwards) with their
newest 50 behaviours, and scores users that have at least 50 (so L = 50) against N random catalog
items. In the same run it measures the floors: a trivial endpoint (GET /healthz, the HTTP floor),
one pipelined Redis read, and the bare model call; and the baseline, a straightforward service
(devtools/baseline/app.py) on the same Redis data, weights and load. Each run also reads the
server's CPU time per request from /proc: each worker's main thread (its event loop) and every
thread of the server's processes. Needs wrk (apt-get install wrk; make bench-service installs it).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from string import Template

import numpy as np
import pyarrow.csv as pacsv
import redis

from contracts.bundle import load_bundle, session_options
from contracts.keys import Keys, decode_history
from contracts.redis_client import SyncClient, keys_for, sync_client
from contracts.repository import ModelRepository
from devtools.baseline import SERVE_COMMAND as BASELINE_COMMAND
from devtools.baseline.export import export_baseline
from devtools.benchutil import machine, replace_readme_block
from devtools.liveserver import ROOT
from devtools.otlp import OtlpSink
from devtools.redis_cluster import LocalCluster
from devtools.stack import Served, Stack
from jobs.load_behaviors import load, read_log
from model.onnx_export import export_bundle
from service.features import Features

REDIS_URL, PREFIX, L = "redis://127.0.0.1:6379/13", "bench:", 50
LUA = Template("""
local bodies = {$bodies}
local i = 0
request = function()
  i = i % math.max(#bodies, 1) + 1
  $request
end
done = function(summary, latency, requests)
  local e = summary.errors
  local f = io.open("$out", "w")
  f:write(string.format('{"p50_us": %d, "p95_us": %d, "p99_us": %d, "requests": %d, "duration_us": %d, '
    .. '"socket_errors": %d, "non2xx": %d}', latency:percentile(50), latency:percentile(95),
    latency:percentile(99), summary.requests, summary.duration,
    e.connect + e.read + e.write + e.timeout, e.status))
  f:close()
end
""")
SCORE = 'return wrk.format("POST", "/score", {["Content-Type"] = "application/json"}, bodies[i])'
HEALTH = 'return wrk.format("GET", "/healthz")'


def lua_script(path: Path, out: Path, bodies: list[str] | None) -> Path:
    """A wrk script cycling through ``bodies`` on POST /score (or GET /healthz), reporting to ``out``."""
    listed = ",".join(f"[==[{b}]==]" for b in bodies or [])
    path.write_text(LUA.substitute(bodies=listed, request=SCORE if bodies else HEALTH, out=str(out)))
    return path


def wrk(url: str, bodies: list[str] | None, concurrency: int, seconds: int, out: Path) -> dict:
    script = lua_script(out.with_suffix(".lua"), out, bodies)
    threads = 1 if concurrency == 1 else 2
    cmd = [
        "wrk",
        f"-t{threads}",
        f"-c{concurrency}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        str(script),
        url,
    ]
    subprocess.run(cmd, check=True, capture_output=True)
    r = json.loads(out.read_text())
    return {
        "p50_ms": r["p50_us"] / 1e3,
        "p95_ms": r["p95_us"] / 1e3,
        "p99_ms": r["p99_us"] / 1e3,
        "rps": r["requests"] / (r["duration_us"] / 1e6),
        "requests": r["requests"],
        "errors": r["socket_errors"] + r["non2xx"],
    }


def process_tree(pid: int) -> list[int]:
    """The process and all its descendants (uvicorn's supervisor and its workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            todo += [int(c) for c in task.read_text().split()]
    return out


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time (user + system) so far of the serving processes' main threads (each worker's event
    loop; with one worker, the server's) and of every thread of the process and its descendants."""
    tick = os.sysconf("SC_CLK_TCK")

    def read(path: str) -> float:
        try:
            fields = Path(path).read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0  # a process that ended between the listing and the read
        return (int(fields[11]) + int(fields[12])) / tick

    tree = process_tree(pid)
    # With workers, the supervisor's main thread only watches them: an event loop runs in each worker.
    loops = [p for p in tree if p != pid] if len(tree) > 1 else tree
    return sum(read(f"/proc/{p}/task/{p}/stat") for p in loops), sum(read(f"/proc/{p}/stat") for p in tree)


def redis_cpu_seconds(client: SyncClient) -> float:
    """CPU time (user + system) so far of the Redis server, or of every node of a cluster: what the
    service's reads and the impression log's writes cost on the other side."""
    info = client.info("cpu", **({"target_nodes": "all"} if isinstance(client, redis.RedisCluster) else {}))
    per_node = info.values() if isinstance(client, redis.RedisCluster) else [info]
    return sum(float(n["used_cpu_user"]) + float(n["used_cpu_sys"]) for n in per_node)


def measure(
    url: str, pid: int, store: SyncClient, bodies: list[str] | None, concurrency: int, seconds: int, out: Path
) -> dict:
    """One wrk run, with CPU milliseconds per request: the server's event loop, all its threads,
    and the Redis server(s) behind it."""
    loop0, all0 = cpu_seconds(pid)
    redis0 = redis_cpu_seconds(store)
    row = wrk(url, bodies, concurrency, seconds, out)
    loop1, all1 = cpu_seconds(pid)
    redis1 = redis_cpu_seconds(store)
    done = max(row["requests"], 1)
    return row | {
        "loop_cpu_ms": (loop1 - loop0) / done * 1e3,
        "cpu_ms": (all1 - all0) / done * 1e3,
        "redis_cpu_ms": (redis1 - redis0) / done * 1e3,
    }


def load_users(client: SyncClient, keys: Keys, data: Path) -> tuple[list[int], list[dict]]:
    """Loads the dataset's users (newest L behaviours each) under PREFIX; returns the users with at
    least L behaviours, and the catalog's items (candidates)."""
    log = read_log(str(data), None)
    load(client, log, keys, cap=L, ttl=3600, batch=1000, progress=False)
    users_all, counts = np.unique(log.user, return_counts=True)
    return [int(u) for u in users_all[counts >= L]], pacsv.read_csv(data / "items.csv.gz").to_pylist()


def clear(client: redis.Redis) -> None:
    stale = list(client.scan_iter(match=f"{PREFIX}*", count=10_000))
    for k in range(0, len(stale), 10_000):
        client.delete(*stale[k : k + 10_000])


def redis_floor(client: SyncClient, keys: Keys, users: list[int], runs: int = 2000) -> tuple[float, float]:
    """The median time of the read /score makes (history and profile in one pipeline), from a
    script, and its CPU per read: this client's and the Redis server's."""
    times = []
    cpu0, server0 = time.process_time(), redis_cpu_seconds(client)
    for k in range(runs):
        u = users[k % len(users)]
        t0 = time.perf_counter()
        pipe = client.pipeline(transaction=False)
        pipe.lrange(keys.history(u), -100, -1)
        pipe.hgetall(keys.profile(u))
        pipe.execute()
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu0 + redis_cpu_seconds(client) - server0
    return statistics.median(times) * 1e3, cpu / runs * 1e3


def model_floor(
    bundle_dir: Path, history: list[dict], candidates: list[dict], runs: int = 500
) -> tuple[float, float]:
    """The bare model call, one onnxruntime thread: its median time and its CPU per call."""
    bundle = load_bundle(bundle_dir, session_options(1))
    behavior = bundle.space.schema.behavior
    features = Features(bundle.space)
    encoded = features.encode_rows(candidates, behavior)
    feeds = features.feeds(history[-bundle.max_history :], {}, {}, encoded)
    for _ in range(50):
        bundle.run(feeds)
    times = []
    cpu0 = time.process_time()
    for _ in range(runs):
        t0 = time.perf_counter()
        bundle.run(feeds)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, (time.process_time() - cpu0) / runs * 1e3


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, default=ROOT / "runs/bench_train/amazon-sports/DIN_default")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/amazon-sports")
    p.add_argument("--seconds", type=int, default=15, help="per wrk run")
    p.add_argument("--quick", action="store_true")
    p.add_argument(
        "--microbatch-ms",
        type=float,
        nargs="+",
        default=[0.0, 2.0],
        help="DIN_MICROBATCH_WAIT_MS values to compare (0 = off)",
    )
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[2, 1],
        help="uvicorn worker processes, each count measured in the same run (2: what the quickstart, "
        "compose and Kubernetes run; the baseline runs the first)",
    )
    p.add_argument(
        "--logging",
        nargs="+",
        choices=("on", "off"),
        default=["on", "off"],
        help="the impression log (DIN_LOG_IMPRESSIONS), each measured in the same run",
    )
    p.add_argument(
        "--tracing",
        nargs="+",
        choices=tuple(TRACING),
        default=["off"],
        help="OpenTelemetry tracing: off, or on sampling 1%% or 100%% of requests, exporting OTLP to a sink "
        "this script runs; each measured in the same run",
    )
    p.add_argument(
        "--redis",
        nargs="+",
        choices=("single", "cluster"),
        default=["single"],
        help="the behaviour store: the Redis at 127.0.0.1:6379, or a local Redis Cluster of 3 masters and "
        "3 replicas this script starts (scripts/redis_cluster.py); each measured in the same run",
    )
    p.add_argument(
        "--max-queue-ms",
        type=float,
        default=0.0,
        help="DIN_MAX_QUEUE_MS; 0 (default here) turns admission control off, so the runs measure "
        "capacity: 16 back-to-back clients queue past the service's default 10 ms budget",
    )
    p.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure the straightforward service of devtools/baseline/",
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every build this many times, in turn (A, B, A, B, ...): rows report medians, and "
        "the impression log's cost is the median of each round's on/off pair",
    )
    p.add_argument("--json", type=Path)
    p.add_argument("--png", type=Path)
    p.add_argument("--readme", type=Path, help="replace the --block block of this file")
    p.add_argument("--block", default="bench_service", help="the block --readme replaces")
    a = p.parse_args(argv)
    if a.rounds < 1:
        p.error("--rounds must be at least 1")
    if shutil.which("wrk") is None:
        p.error("wrk is not installed (apt-get install wrk)")
    if not (a.run / "ckpt.pt").exists() or not a.data.is_dir():
        p.error(f"need a trained run ({a.run}) and the dataset folder ({a.data})")

    tmp = Path(tempfile.mkdtemp(prefix="bench-service-"))
    sink = OtlpSink() if set(a.tracing) - {"off"} else None
    keys = Keys(PREFIX)
    client = redis.Redis.from_url(REDIS_URL)
    cluster = LocalCluster(tmp / "cluster").start() if "cluster" in a.redis else None
    urls = {"single": REDIS_URL, "cluster": cluster.url if cluster else ""}
    try:
        export_bundle(a.run / "ckpt.pt", tmp / "bundle", version="bench")
        export_baseline(a.run / "ckpt.pt", tmp / "baseline")
        repo = ModelRepository(tmp / "models")
        repo.set_current(repo.publish(tmp / "bundle"))
        users, items = load_users(client, keys, a.data)
        rng = random.Random(0)

        sample_hist = decode_history(client.lrange(keys.history(users[0]), 0, -1))
        floors: dict[str, float] = {}
        floors["redis_p50_ms"], floors["redis_cpu_ms"] = redis_floor(client, keys, users)
        floors["model_p50_ms"], floors["model_cpu_ms"] = model_floor(
            tmp / "bundle", sample_hist, rng.sample(items, 200)
        )
        if cluster is not None:
            on_cluster = sync_client(cluster.url)
            load_users(on_cluster, keys_for(cluster.url, PREFIX), a.data)
            floors["redis_cluster_p50_ms"], _ = redis_floor(on_cluster, keys_for(cluster.url, PREFIX), users)
            on_cluster.close()
        grid = [(200, 1), (200, 16)] if a.quick else [(n, c) for n in (20, 200) for c in (1, 16)]
        bodies = {
            n: [
                json.dumps({"user_id": rng.choice(users), "candidates": rng.sample(items, n)})
                for _ in range(64)
            ]
            for n in {n for n, _ in grid}
        }
        rows: list[dict] = []
        builds: list[tuple[dict[str, str], list[str] | None, dict]] = [
            (
                {
                    "DIN_LOG_IMPRESSIONS": str(logging == "on").lower(),
                    "DIN_MODELS": str(repo.root),
                    "DIN_REDIS_URL": urls[store],
                    "DIN_KEY_PREFIX": PREFIX,
                    "DIN_MICROBATCH_WAIT_MS": str(wait_ms),
                    "DIN_MAX_QUEUE_MS": str(a.max_queue_ms),
                    **tracing_env(tracing, sink),
                },
                None,
                {
                    "build": "service",
                    "workers": workers,
                    "microbatch_ms": wait_ms,
                    "logging": logging,
                    "tracing": tracing,
                    "redis": store,
                },
            )
            for workers in a.workers
            for store in a.redis
            for wait_ms in a.microbatch_ms
            for logging in a.logging
            for tracing in a.tracing
        ]
        if a.baseline:
            baseline_env = {
                "BASELINE_MODEL_DIR": str(tmp / "baseline"),
                "BASELINE_REDIS_URL": REDIS_URL,
                "BASELINE_KEY_PREFIX": PREFIX,
            }
            builds.append((baseline_env, BASELINE_COMMAND, {"build": "baseline", "workers": a.workers[0]}))
        stores = {name: sync_client(url) for name, url in urls.items() if url}
        stack = Stack(repo, REDIS_URL, PREFIX)
        servers: list[tuple[Served, dict]] = []
        with ExitStack() as running:
            for store_client in stores.values():
                running.callback(store_client.close)
            for extra_env, command, labels in builds:  # all up at once: a round runs them back to back
                served = running.enter_context(
                    stack.serve(labels["workers"], command, os.environ | extra_env)
                )
                servers.append((served, labels))
                for n, c in grid:
                    wrk(served.url, bodies[n], c, 3, tmp / "warm-up.json")
            # The trivial route on the first service: its time, and the CPU of all its processes.
            first = servers[0][0]
            floor_run = measure(
                first.url, first.pid, client, None, 1, max(3, a.seconds // 3), tmp / "floor.json"
            )
            floors["http_p50_ms"], floors["http_cpu_ms"] = floor_run["p50_ms"], floor_run["cpu_ms"]
            floors["sum_ms"] = floors["http_p50_ms"] + floors["redis_p50_ms"] + floors["model_p50_ms"]
            floors["cpu_ms"] = floors["http_cpu_ms"] + floors["redis_cpu_ms"] + floors["model_cpu_ms"]
            print(f"floors: {floors}", flush=True)
            for round_ in range(a.rounds):
                # Per point of the grid, every build back to back, in reverse order every other round:
                # what is compared runs seconds apart, so the machine's drift hits all builds alike.
                for n, c in grid:
                    for served, labels in servers if round_ % 2 == 0 else servers[::-1]:
                        store = stores[labels.get("redis", "single")]
                        out = tmp / f"score-{n}-{c}-{len(rows)}.json"
                        measured = measure(served.url, served.pid, store, bodies[n], c, a.seconds, out)
                        row = {"n": n, "l": L, "concurrency": c, "round": round_, **labels}
                        rows.append(row | measured)
                        print(
                            f"round {round_ + 1}/{a.rounds} {describe(row)} N={n:4d} L={L} c={c:2d}: "
                            f"p50 {measured['p50_ms']:.2f} ms  p95 {measured['p95_ms']:.2f}  "
                            f"p99 {measured['p99_ms']:.2f}  {measured['rps']:.0f} req/s  CPU/request: "
                            f"event loop {measured['loop_cpu_ms']:.2f} ms, all {measured['cpu_ms']:.2f} ms, "
                            f"Redis {measured['redis_cpu_ms']:.2f} ms  errors {measured['errors']}",
                            flush=True,
                        )
    finally:
        clear(client)
        client.close()
        if cluster is not None:
            cluster.stop()
        shutil.rmtree(tmp, ignore_errors=True)
        if sink is not None:
            sink.close()

    info = machine()
    summary = medians(rows)
    built = [labels for _, _, labels in builds]
    summary.sort(key=lambda r: (next(i for i, lab in enumerate(built) if lab.items() <= r.items()),
                                grid.index((r["n"], r["concurrency"]))))  # fmt: skip
    md = table(summary, floors)
    if a.rounds > 1:
        md += (
            f"\n\nEach row is the median of {a.rounds} rounds. A round measures every build at each "
            "concurrency back to back, in the other order every second round; the servers all run "
            "from the start, idle while another is measured."
        )
    md += (
        f"\n\nFloors in the same run: HTTP (GET /healthz) p50 {floors['http_p50_ms']:.2f} ms, "
        f"Redis pipelined read p50 {floors['redis_p50_ms']:.2f} ms, "
        + (
            f"the same read from the local Redis Cluster p50 {floors['redis_cluster_p50_ms']:.2f} ms, "
            if "redis_cluster_p50_ms" in floors
            else ""
        )
        + f"bare model call (N = 200, L = 50, 1 thread) p50 {floors['model_p50_ms']:.2f} ms; "
        f"their sum {floors['sum_ms']:.2f} ms. CPU floor per request: the trivial route "
        f"{floors['http_cpu_ms']:.2f} ms (all the first service's processes), the Redis read "
        f"{floors['redis_cpu_ms']:.2f} ms (client and server), the model call "
        f"{floors['model_cpu_ms']:.2f} ms; "
        f"{floors['cpu_ms']:.2f} ms in all, {2000 / floors['cpu_ms']:.0f} requests/s on two cores. "
        f"Admission control "
        f"{f'at DIN_MAX_QUEUE_MS={a.max_queue_ms:g}' if a.max_queue_ms else 'off'}. "
        f"Machine: {info}; wrk and the server share it."
    )
    if sink is not None:
        md += (
            f" Tracing exports OTLP/HTTP in batches (the SDK's defaults) to a sink in this script, on "
            f"the same machine, which took {sink.requests} export requests ({sink.bytes / 1e6:.1f} MB)."
        )
    md += versus_baseline(summary) + log_cost(rows)
    print("\n" + md)
    if a.json:
        a.json.write_text(
            json.dumps({"machine": info, "floors": floors, "rows": summary, "runs": rows}, indent=2)
        )
    if a.png:
        plot(summary, a.png)
    if a.readme:
        replace_readme_block(a.readme, a.block, md)


def describe(row: dict) -> str:
    if row["build"] == "baseline":
        return (
            f"baseline, {row['workers']} worker{'s' if row['workers'] != 1 else ''}"
            if "workers" in row
            else "baseline"
        )
    traced = "" if row.get("tracing", "off") == "off" else f", tracing {row['tracing']}"
    store = ", Redis Cluster" if row.get("redis") == "cluster" else ""
    workers = f"{row['workers']} worker{'s' if row['workers'] != 1 else ''}, " if "workers" in row else ""
    return f"service, {workers}micro-batch {row['microbatch_ms']:g} ms, log {row['logging']}{traced}{store}"


TRACING = {"off": None, "1%": 0.01, "100%": 1.0}  # the share of requests sampled


def tracing_env(tracing: str, sink: OtlpSink | None) -> dict[str, str]:
    ratio = TRACING[tracing]
    if ratio is None or sink is None:
        return {}
    return {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": f"{sink.url}/v1/traces",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(ratio),
            "OTEL_SERVICE_NAME": "din-serve-bench"}  # fmt: skip


def table(rows: list[dict], floors: dict) -> str:
    """A row per setup: latency against the sum of the floors' times, and CPU per request (every
    process of the server, plus Redis) against the CPU floor."""
    md = "| build | N | L | concurrency | p50 ms | p50 / floors | p95 ms | p99 ms | requests/s "
    md += "| event-loop CPU ms/request | CPU ms/request, server + Redis | × CPU floor | errors |\n"
    md += "|---" * 13 + "|\n"
    return md + "\n".join(
        f"| {describe(r)} | {r['n']} | {r['l']} | {r['concurrency']} | {r['p50_ms']:.2f} "
        f"| {r['p50_ms'] / floors['sum_ms']:.1f}× | {r['p95_ms']:.2f} | {r['p99_ms']:.2f} | {r['rps']:.0f} "
        f"| {r['loop_cpu_ms']:.2f} | {r['cpu_ms'] + r['redis_cpu_ms']:.2f} "
        f"| {(r['cpu_ms'] + r['redis_cpu_ms']) / floors['cpu_ms']:.1f}× | {r['errors']} |"
        for r in rows
    )


METRICS = ("p50_ms", "p95_ms", "p99_ms", "rps", "loop_cpu_ms", "cpu_ms", "redis_cpu_ms")


def setup(row: dict) -> tuple:
    """What a row measured, apart from the round and the figures."""
    return tuple(
        (k, v) for k, v in row.items() if k not in METRICS and k not in ("round", "requests", "errors")
    )


def medians(rows: list[dict]) -> list[dict]:
    """One row per setup, in first-seen order: the median of each figure over the rounds, the
    requests and errors summed."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(setup(r), []).append(r)
    return [
        dict(key)
        | {m: statistics.median(r[m] for r in group) for m in METRICS if m in group[0]}
        | {
            "requests": sum(r["requests"] for r in group),
            "errors": sum(r["errors"] for r in group),
            "rounds": len(group),
        }
        for key, group in groups.items()
    ]


def log_cost(rows: list[dict]) -> str:
    """What the impression log costs: each round's log-on run against the same round's log-off run
    of the same setup, c = 1 median and c = 16 throughput, as the median and range over rounds.
    Pairing within a round keeps the machine's drift between rounds out of the ratio."""
    pairs: dict[tuple, list[tuple[dict, dict]]] = {}
    by_key = {(setup(r), r["round"]): r for r in rows}
    for (key, round_), on in by_key.items():
        if dict(key).get("logging") != "on":
            continue
        off_key = tuple((k, "off" if k == "logging" else v) for k, v in key)
        if (off_key, round_) in by_key:
            pairs.setdefault(key, []).append((on, by_key[(off_key, round_)]))
    out = []
    for key, pair in pairs.items():
        row = dict(key)
        figure, change = ("p50_ms", "median") if row["concurrency"] == 1 else ("rps", "throughput")
        ratios = sorted(on[figure] / off[figure] - 1 for on, off in pair)
        cpu = [
            (on["cpu_ms"] + on["redis_cpu_ms"]) - (off["cpu_ms"] + off["redis_cpu_ms"]) for on, off in pair
        ]
        spread = f" (rounds: {ratios[0]:+.1%} to {ratios[-1]:+.1%})" if len(ratios) > 1 else ""
        out.append(
            f"Impression log on against off, {describe(row).replace(', log on', '')}, N = {row['n']}, "
            f"c = {row['concurrency']}: {change} {statistics.median(ratios):+.1%}{spread} over {len(pair)} "
            f"paired round(s); it adds {statistics.median(cpu):.2f} ms of CPU per request (server and Redis)."
        )
    return "".join("\n\n" + line for line in out)


def versus_baseline(rows: list[dict]) -> str:
    """The service (micro-batching off, logging on if measured) against the baseline, per N."""
    out = []
    for n in sorted({r["n"] for r in rows}):
        base = {r["concurrency"]: r for r in rows if r["build"] == "baseline" and r["n"] == n}
        ours = [r for r in rows if r["build"] == "service" and r["n"] == n and r["microbatch_ms"] == 0
                and r.get("tracing", "off") == "off"]  # fmt: skip
        ours.sort(key=lambda r: r["logging"] != "on")
        mine: dict[int, dict] = {}
        for r in ours:
            mine.setdefault(r["concurrency"], r)
        if 1 in base and 1 in mine and 16 in base and 16 in mine:
            out.append(
                f"At N = {n}, the service (impression log {mine[1]['logging']}) against the baseline: "
                f"c = 1 p50 {mine[1]['p50_ms']:.2f} vs {base[1]['p50_ms']:.2f} ms "
                f"({base[1]['p50_ms'] / mine[1]['p50_ms']:.1f}× lower), "
                f"c = 16 {mine[16]['rps']:.0f} vs {base[16]['rps']:.0f} requests/s "
                f"({mine[16]['rps'] / base[16]['rps']:.1f}× higher)."
            )
    return "".join("\n\n" + line for line in out)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for n, build in sorted({(r["n"], describe(r)) for r in rows}):
        pts = [r for r in rows if (r["n"], describe(r)) == (n, build)]
        label = f"N={n}, {build}"
        ax1.plot([r["concurrency"] for r in pts], [r["p50_ms"] for r in pts], "o-", label=f"p50, {label}")
        ax1.plot([r["concurrency"] for r in pts], [r["p99_ms"] for r in pts], "x--", label=f"p99, {label}")
        ax2.plot([r["concurrency"] for r in pts], [r["rps"] for r in pts], "o-", label=label)
    ax1.set(xlabel="concurrency", ylabel="ms", title="latency")
    ax2.set(xlabel="concurrency", ylabel="requests/s", title="throughput")
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
