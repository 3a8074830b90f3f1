"""Train every model variant on every dataset and write the results table of docs/benchmarks.md.

    python scripts/bench_train.py --data-root ../shared/data --out runs/bench_train \
        --readme docs/benchmarks.md

Each cell is one `python -m model.train` run with default settings except the variant's flags,
so the table is reproducible command by command. Epochs are picked on validation users; the
table shows test metrics only. Prints the machine it ran on.

    python scripts/bench_train.py --scale-out --readme docs/benchmarks.md

measures training at scale instead: samples/s in memory, streamed on 1 process and on 2 (torchrun),
and peak RSS as the data grows 10x (amazon-sports repeated as new users).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from devtools.benchutil import machine, replace_readme_block
from model.stream import CHUNK_ROWS

# name -> flags on top of the defaults (DIN with Dice in the final MLP, PReLU in the activation
# unit, mini-batch aware regularisation λ = 1.0, raw attention weights). The bases get the same
# embeddings, MLP, Dice, MBA, optimiser and epoch selection as DIN. The paper's ablation rows set
# one activation for both MLPs.
VARIANTS: dict[str, list[str]] = {
    "BaseModel (sum)": ["--model", "base", "--base-pooling", "sum"],
    "BaseModel (mean)": ["--model", "base", "--base-pooling", "mean"],
    "DIN": ["--activation", "prelu", "--attention-activation", "prelu", "--regularization", "none"],
    "DIN+Dice": ["--activation", "dice", "--attention-activation", "dice", "--regularization", "none"],
    "DIN+MBA": ["--activation", "prelu", "--attention-activation", "prelu"],
    "DIN+Dice+MBA": ["--activation", "dice", "--attention-activation", "dice"],
    "DIN (default)": [],
    "DIN (default), softmax": ["--attention-softmax"],
}
DATASETS = ("amazon-sports", "amazon-hin", "movielens-100k")
BASES = ("BaseModel (sum)", "BaseModel (mean)")


def run_dir(out: Path, dataset: str, variant: str) -> Path:
    return out / dataset / re.sub(r"[^A-Za-z0-9]+", "_", variant).strip("_")


def train(dataset: Path, variant: str, out: Path, extra: list[str]) -> dict:
    """One cell: reuses a finished run in ``out`` (so an interrupted benchmark resumes)."""
    run = run_dir(out, dataset.name, variant)
    metrics = run / "metrics.json"
    if not metrics.exists():
        cmd = [
            sys.executable,
            "-m",
            "model.train",
            "--data",
            str(dataset),
            "--out",
            str(run),
            "--no-progress",
        ]
        cmd += VARIANTS[variant] + extra
        print("$", " ".join(cmd), flush=True)
        run.mkdir(parents=True, exist_ok=True)
        with open(run / "train.log", "w") as log:
            subprocess.run(cmd, check=True, stdout=log, stderr=subprocess.STDOUT)
    return json.loads(metrics.read_text())


def table(results: dict[str, dict[str, dict]], datasets: list[str]) -> str:
    head = "| model | " + " | ".join(datasets) + " |\n|---|" + "---|" * len(datasets) + "\n"
    rows = []
    for variant in VARIANTS:
        cells = []
        for ds in datasets:
            m = results[ds].get(variant)
            if m is None:
                cells.append("—")
                continue
            t = m["test"]
            best_base = max(results[ds][b]["test"]["gauc"] for b in BASES if b in results[ds])
            impr = ((t["gauc"] - 0.5) / (best_base - 0.5) - 1) * 100
            rel = "" if variant in BASES else f", RelaImpr {impr:+.1f}%"
            cells.append(
                f"AUC {t['auc']:.4f} · **GAUC {t['gauc']:.4f}** · logloss {t['logloss']:.4f} · "
                f"{m['epoch_seconds']:.0f} s/epoch (best epoch {m['best_epoch']}){rel}"
            )
        rows.append(f"| {variant} | " + " | ".join(cells) + " |")
    return head + "\n".join(rows) + "\n"


def scaled_copy(source: Path, out: Path, times: int) -> Path:
    """``source``'s train table repeated ``times`` times, each copy as new users (ids shifted), and
    its test table, both written in row groups the streaming reader shares out by process."""
    if (out / "test.parquet").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    train = pq.read_table(source / "train.parquet")
    shift = pc.max(train["user_id"]).as_py() + 1
    column = train.schema.get_field_index("user_id")
    with pq.ParquetWriter(out / "train.parquet.tmp", train.schema) as w:
        for k in range(times):
            w.write_table(
                train.set_column(column, "user_id", pc.add(train["user_id"], k * shift)), CHUNK_ROWS
            )
    pq.write_table(
        pq.read_table(source / "test.parquet"), out / "test.parquet.tmp", row_group_size=CHUNK_ROWS
    )
    for split in ("train", "test"):
        (out / f"{split}.parquet.tmp").rename(out / f"{split}.parquet")
    return out


def measured(cmd: list[str], out: Path) -> tuple[dict, float]:
    """Runs one training command; its metrics and the peak RSS (MB) of its largest process."""
    out.mkdir(parents=True, exist_ok=True)
    print("$", " ".join(cmd), flush=True)
    with open(out / "train.log", "w") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"OMP_NUM_THREADS": "1"}
        )
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed; see {out / 'train.log'}")
    return json.loads((out / "metrics.json").read_text()), usage.ru_maxrss / 1024


def scale_out(data: Path, out: Path) -> str:
    """Training samples/s at 1 and 2 processes and peak memory at 1x and 10x the data."""
    one, ten = scaled_copy(data, out / "data-1x", 1), scaled_copy(data, out / "data-10x", 10)
    train = [sys.executable, "-m", "model.train", "--epochs", "1", "--no-progress"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "model.train"]
    runs = [
        ("in memory (the default), 1 process", one, [*train, "--data", str(one)]),
        ("streamed, 1 process", one, [*train, "--data", str(one), "--stream"]),
        ("streamed, 2 processes (torchrun, gloo)", one, [*torchrun, *train[3:], "--data", str(one)]),
        ("streamed, 1 process", ten, [*train, "--data", str(ten), "--stream"]),
    ]
    rows = ["| training | data | samples/s | peak RSS MB | test GAUC |", "|---|---|---|---|---|"]
    for k, (name, folder, cmd) in enumerate(runs):
        metrics, rss = measured([*cmd, "--out", str(out / f"run-{k}")], out / f"run-{k}")
        rows_n = pq.ParquetFile(folder / "train.parquet").metadata.num_rows
        rows.append(
            f"| {name} | {folder.name.removeprefix('data-')} ({rows_n:,} train rows) | "
            f"{metrics['samples_per_second']:,.0f} | {rss:,.0f} | {metrics['test']['gauc']:.4f} |"
        )
        print(rows[-1], flush=True)
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", type=Path, default=Path("runs/bench_train"))
    p.add_argument(
        "--readme", type=Path, help="replace the table between the bench_train markers in this file"
    )
    p.add_argument("--report-only", action="store_true", help="tabulate finished runs, train nothing")
    p.add_argument(
        "--scale-out",
        action="store_true",
        help="instead: samples/s at 1 and 2 processes, peak RSS at 1x and 10x amazon-sports (1 epoch each)",
    )
    p.add_argument("extra", nargs="*", help="flags passed to every model.train run (after --)")
    a = p.parse_args(argv)
    if a.scale_out:
        started = time.time()
        md = scale_out(a.data_root / "amazon-sports", a.out / "scale-out")
        info = f"Machine: {machine()}. Wall time {(time.time() - started) / 60:.0f} min."
        print(md + "\n" + info)
        if a.readme:
            replace_readme_block(a.readme, "bench_scale", f"{md}\n{info}")
        return
    missing = [d for d in a.datasets if not (a.data_root / d).is_dir()]
    if missing:
        p.error(f"--data-root {a.data_root}: no folder for {missing}")

    started = time.time()
    results: dict[str, dict[str, dict]] = {ds: {} for ds in a.datasets}
    for ds in a.datasets:
        for variant in a.variants:
            finished = run_dir(a.out, ds, variant) / "metrics.json"
            if a.report_only and not finished.exists():
                continue
            results[ds][variant] = train(a.data_root / ds, variant, a.out, a.extra)
            t = results[ds][variant]["test"]
            print(
                f"{ds:15s} {variant:17s} test AUC {t['auc']:.4f} GAUC {t['gauc']:.4f} ll {t['logloss']:.4f}"
            )
    md = table(results, a.datasets)
    info = f"Machine: {machine()}."
    if not a.report_only:
        info += f" Wall time {(time.time() - started) / 60:.0f} min."
    print(md + "\n" + info)
    (a.out / "results.json").write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    (a.out / "results.md").write_text(md + "\n" + info + "\n")
    if a.readme:
        replace_readme_block(a.readme, "bench_train", f"{md}\n{info}")
