"""Latency of one scoring request: torch eager (tiled) vs plain ONNX export (tiled) vs our serving graph.

    python scripts/bench_model.py --run runs/din --json runs/bench_model.json --png runs/bench_model.png
    python scripts/bench_model.py --quick        # just N = 200, L = 50

(a) torch_eager:   the training graph in torch, every candidate a sample with a tiled history,
                   as DeepCTR-Torch-style code scores;
(b) onnx_tiled:    a plain torch.onnx.export of that training graph, fed the same tiled inputs;
(c) serving_graph: our export (model/serving.py), the history once per request, with the service's
                   onnxruntime thread setup (one intra-op thread, the second core free).
All three use the same trained weights and run in this process, within the same thread budget.
Without --run, a default-size DIN is trained for one epoch on the synthetic generator (weights do
not change latency; sizes do). Also measures this machine's sgemm peak with a 2048³ matmul.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort
import torch

from contracts.bundle import session_options
from devtools.baseline.export import export_tiled
from devtools.benchutil import machine, replace_readme_block
from model.config import DINConfig, TrainConfig
from model.din import DIN, Batch, Checkpoint
from model.onnx_export import as_feeds, export_onnx, random_inputs, tile
from model.serving import ServingInputs
from model.train import run
from service.settings import Settings

# The serving graph runs as the service runs it: this many onnxruntime threads per run (at most the
# budget), the rest of the cores left to other requests. A run is ~30 small ops, and waking a second
# thread for each cost more than it saved in every --tune configuration of the README's run.
SERVICE_ORT_THREADS = Settings.model_fields["ort_intra_threads"].default

GRID_N, GRID_L = (20, 200, 1000), (20, 50, 100)


def sgemm_gflops(threads: int, size: int = 2048, repeats: int = 5) -> float:
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_time(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _time(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def percentiles(times: list[float]) -> tuple[float, float]:
    times = sorted(times)
    return statistics.median(times), times[min(len(times) - 1, int(0.99 * len(times)))]


def interleaved(
    fns: dict[str, Callable[[], object]], runs: dict[str, int], blocks: int = 10
) -> dict[str, list[float]]:
    """Milliseconds per call of each function, timed in turns: this machine's speed drifts within
    seconds, and timing one variant after the other would charge the drift to their ratio."""
    for name, fn in fns.items():
        for _ in range(max(10, runs[name] // 10)):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(blocks):
        for name, fn in fns.items():
            time.sleep(0.02)  # lets the previous variant's spinning pool threads go idle
            for _ in range(3):  # caches and thread pools, after the other variants ran
                fn()
            times[name] += [_time(fn) * 1e3 for _ in range(-(-runs[name] // blocks))]
    return times


def macs(cfg: DINConfig, fd: int, other: int, n: int, length: int, variant: str) -> int:
    """Multiply-adds of one request: attention MLP, pooling and the final MLP (embedding lookups are free)."""
    h = cfg.attention_hidden
    rest = sum(a * b for a, b in itertools.pairwise((*h, 1)))  # layers after the first, per pair
    if variant == "serving_graph":
        # FD×H1 rows and a bias term for the shorter side (candidates or behaviours), then one Gemm
        first = 2 * min(n, length) * fd * h[0] + n * length * fd * h[0]
    else:
        first = n * length * 4 * fd * h[0]  # [e, v, e−v, e⊙v] for every pair
    dims = (2 * fd + other, *cfg.mlp_hidden, 1)
    mlp = n * sum(a * b for a, b in itertools.pairwise(dims))
    return first + n * length * rest + n * length * fd + mlp


def bench(
    model: DIN, grid: list[tuple[int, int]], threads: list[int], runs: int, workdir: Path
) -> list[dict]:
    export_onnx(model, workdir / "serving.onnx")
    export_tiled(model, workdir / "tiled.onnx")
    fd = model.behavior_dim
    other = (len(model.schema.profile) + len(model.schema.context)) * model.cfg.embed_dim
    rows = []
    for t in threads:
        torch.set_num_threads(t)
        serving_threads = min(t, SERVICE_ORT_THREADS)
        serving = ort.InferenceSession(str(workdir / "serving.onnx"), session_options(serving_threads))
        tiled = ort.InferenceSession(str(workdir / "tiled.onnx"), session_options(t))
        for n, length in grid:
            x: ServingInputs = random_inputs(model.space, [length], [n], length, seed=n + length)
            b = tile(x)
            feeds_serving = as_feeds(x)._asdict()
            feeds_tiled = {k: v.numpy() for k, v in zip(b._fields, b, strict=True)}

            def eager(b: Batch = b) -> object:
                with torch.inference_mode():
                    return model(b)

            variants: dict[str, Callable[[], object]] = {
                "torch_eager": eager,
                "onnx_tiled": functools.partial(tiled.run, ["ctr"], feeds_tiled),
                "serving_graph": functools.partial(serving.run, ["ctr"], feeds_serving),
            }
            counts = {
                name: runs if name == "serving_graph" or n * length <= 20_000 else max(200, runs // 5)
                for name in variants
            }
            for name, times in interleaved(variants, counts).items():
                p50, p99 = percentiles(times)
                m = macs(model.cfg, fd, other, n, length, name)
                rows.append(
                    {
                        "variant": name,
                        "n": n,
                        "l": length,
                        "threads": t,
                        "ort_threads": serving_threads if name == "serving_graph" else t,
                        "p50_ms": p50,
                        "p99_ms": p99,
                        "macs": m,
                        "gflops": 2 * m / p50 / 1e6,
                    }
                )
                print(
                    f"{name:14s} N={n:5d} L={length:4d} threads={t}: p50 {p50:8.3f} ms  p99 {p99:8.3f} ms  "
                    f"{m / 1e6:8.1f} MMAC  {2 * m / p50 / 1e6:6.1f} GFLOP/s",
                    flush=True,
                )
    return rows


def tune(model: DIN, workdir: Path, runs: int) -> list[dict]:
    """Serving graph at N = 200, L = 50 across opsets, optimisation levels and thread counts."""
    x = random_inputs(model.space, [50], [200], 50, seed=7)
    feeds = as_feeds(x)._asdict()
    levels = {
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    out = []
    for opset in (17, 18, 20):
        path = workdir / f"serving-{opset}.onnx"
        export_onnx(model, path, opset)
        for level_name, level in levels.items():
            for t in (1, 2):
                opts = session_options(t)
                opts.graph_optimization_level = level
                sess = ort.InferenceSession(str(path), opts)
                run = functools.partial(sess.run, ["ctr"], feeds)
                p50, p99 = percentiles(interleaved({"serving": run}, {"serving": runs})["serving"])
                out.append(
                    {"opset": opset, "opt_level": level_name, "threads": t, "p50_ms": p50, "p99_ms": p99}
                )
                print(
                    f"tune opset {opset} {level_name:8s} threads={t}: p50 {p50:.3f} ms p99 {p99:.3f} ms",
                    flush=True,
                )
    return out


def table(rows: list[dict], sgemm: float) -> str:
    lines = [
        "| N | L | threads | torch eager, tiled (p50 / p99 ms) | ONNX export, tiled | "
        f"serving graph ({SERVICE_ORT_THREADS} onnxruntime thread per run) | "
        "speed-up vs eager / vs ONNX | serving MMAC | serving GFLOP/s (% of sgemm peak) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keyed = {(r["variant"], r["n"], r["l"], r["threads"]): r for r in rows}
    for (variant, n, length, t), r in keyed.items():
        if variant != "serving_graph":
            continue
        a, b = keyed[("torch_eager", n, length, t)], keyed[("onnx_tiled", n, length, t)]
        lines.append(
            f"| {n} | {length} | {t} | {a['p50_ms']:.2f} / {a['p99_ms']:.2f} "
            f"| {b['p50_ms']:.2f} / {b['p99_ms']:.2f} "
            f"| **{r['p50_ms']:.2f}** / {r['p99_ms']:.2f} | {a['p50_ms'] / r['p50_ms']:.1f}× / "
            f"{b['p50_ms'] / r['p50_ms']:.1f}× | {r['macs'] / 1e6:.1f} | {r['gflops']:.1f} "
            f"({100 * r['gflops'] / sgemm:.0f}%) |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ls = sorted({r["l"] for r in rows})
    fig, axes = plt.subplots(1, len(ls), figsize=(5 * len(ls), 4), squeeze=False)
    t = max(r["threads"] for r in rows)
    for ax, length in zip(axes[0], ls, strict=True):
        for variant in ("torch_eager", "onnx_tiled", "serving_graph"):
            pts = sorted(
                (r["n"], r["p50_ms"])
                for r in rows
                if r["variant"] == variant and r["l"] == length and r["threads"] == t
            )
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=variant)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="candidates N",
            ylabel="p50 ms",
            title=f"L = {length}, {t} threads",
        )
        ax.grid(alpha=0.3, which="both")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="a model.train --out folder (default: train a synthetic one)")
    p.add_argument("--quick", action="store_true", help="only N = 200, L = 50")
    p.add_argument("--runs", type=int, default=300, help="timed runs per cell (>= 200)")
    p.add_argument("--threads", type=int, nargs="+", default=[2])
    p.add_argument("--tune", action="store_true", help="also sweep opset, optimisation level and threads")
    p.add_argument("--json", type=Path)
    p.add_argument("--png", type=Path)
    p.add_argument("--markdown", type=Path, help="write the results table here")
    p.add_argument(
        "--readme", type=Path, help="replace the table between the bench_model markers in this file"
    )
    a = p.parse_args(argv)
    if a.runs < 200:
        p.error("--runs must be >= 200 for a meaningful p99")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        if a.run:
            if not (a.run / "ckpt.pt").exists():
                p.error(f"--run {a.run}: no ckpt.pt")
            model = Checkpoint.load(str(a.run / "ckpt.pt")).build()
        else:
            print("training a default-size DIN for one epoch on SYNTHETIC data (latency only)", flush=True)
            run(
                DINConfig(), TrainConfig(data="synthetic", out=str(workdir / "run"), epochs=1, progress=False)
            )
            model = Checkpoint.load(str(workdir / "run" / "ckpt.pt")).build()
        info = machine()
        print(info)
        sgemm = sgemm_gflops(max(a.threads))
        print(f"sgemm peak (2048³, {max(a.threads)} threads): {sgemm:.1f} GFLOP/s")
        grid = [(200, 50)] if a.quick else [(n, length) for length in GRID_L for n in GRID_N]
        rows = bench(model, grid, a.threads, a.runs, workdir)
        tuning = tune(model, workdir, a.runs) if a.tune else []
    md = table(rows, sgemm)
    print("\n" + md + f"\nMachine: {info}; sgemm peak {sgemm:.0f} GFLOP/s.")
    result = {"machine": info, "sgemm_gflops": sgemm, "rows": rows, "tuning": tuning}
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(result, indent=2))
    if a.png:
        plot(rows, a.png)
    footer = f"\nMachine: {info}; sgemm peak {sgemm:.0f} GFLOP/s ({max(a.threads)} threads, 2048³)."
    if a.markdown:
        a.markdown.write_text(md + footer + "\n")
    if a.readme:
        replace_readme_block(a.readme, "bench_model", md + footer)
