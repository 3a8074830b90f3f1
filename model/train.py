"""Train DIN or the BaseModel and report the paper's metrics.

    python -m model.train --data ../shared/data/amazon-sports --model din --out runs/din

Reads top to bottom: data -> vocabularies -> validation split by user -> epochs with early stopping
on validation GAUC -> test metrics of the best epoch -> OUT/{ckpt.pt, metrics.json, curves.png}.
Test is only ever reported; it never picks an epoch or a hyper-parameter. Data that does not fit
in memory: ``--stream``, or ``torchrun --nproc-per-node K -m model.train`` (model.distributed).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.data import Samples, encode, infer_schema, load_tables, split_by_user, vocab_columns
from model.din import DIN, Batch, Checkpoint, DINConfig, build_model, warm_start
from model.distributed import run_streaming, world_size
from model.distributed import sources as streaming_sources
from model.metrics import evaluate
from model.schema import FeatureSpace


@dataclass
class TrainConfig:
    data: str = "synthetic"  # "synthetic", {train,test}.parquet, a raw log, or an exported log folder
    init_from: str = ""  # a run folder: start from its weights (and architecture), new ids added
    out: str = "runs/din"
    epochs: int = 10  # upper bound; early stopping usually ends sooner
    patience: int = 2  # epochs without a better validation GAUC before stopping
    batch_size: int = 256  # 1024 cost DIN and the BaseModel ~0.01 validation GAUC on amazon-sports
    lr: float = 1e-3  # Adam
    max_history: int = 100  # most recent behaviours kept per sample
    valid_fraction: float = 0.1  # of train users, held out to pick the epoch
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = one per core (shared by the processes under torchrun)
    progress: bool = True
    # Streaming (model.distributed): the Parquet train/test of --data read in chunks, never whole.
    # Always on under torchrun (WORLD_SIZE > 1), which shards the rows over the processes.
    stream: bool = False
    shuffle_buffer: int = 100_000  # rows mixed at once when streaming
    loader_workers: int = 0  # DataLoader worker processes per training process when streaming


def predict(model: DIN, samples: Samples, batch_size: int = 8192) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for batch, _ in samples.batches(batch_size):
            out.append(torch.sigmoid(model(batch)).numpy())
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def train_epoch(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    batches: Iterable[tuple[Batch, torch.Tensor]],
    total: int | None,
    tc: TrainConfig,
    desc: str,
    after_first_step: Callable[[], None] | None = None,
) -> tuple[float, int]:
    """One pass over ``batches`` (``total`` of them, for the progress bar); the mean training loss
    and the samples seen. ``model`` may be DistributedDataParallel around a DIN."""
    model.train()
    din = cast(DIN, model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model)
    total_loss, seen = 0.0, 0
    bar = tqdm(batches, total=total, desc=desc, disable=not tc.progress, mininterval=1.0)
    for batch, label in bar:
        if len(label) < 2:  # a lone leftover sample has no batch statistics (BatchNorm, Dice)
            continue
        loss = F.binary_cross_entropy_with_logits(model(batch), label)
        opt.zero_grad(set_to_none=True)
        (loss + din.regularization(batch)).backward()
        opt.step()
        if after_first_step is not None and not seen:
            after_first_step()
        total_loss += loss.item() * len(label)
        seen += len(label)
        bar.set_postfix(loss=f"{total_loss / seen:.4f}", refresh=False)
    return total_loss / max(seen, 1), seen


def run(cfg: DINConfig, tc: TrainConfig) -> dict[str, Any]:
    if tc.stream or world_size() > 1:
        return run_streaming(cfg, tc)
    torch.manual_seed(tc.seed)
    torch.set_num_threads(tc.threads or os.cpu_count() or 1)
    rng = np.random.default_rng(tc.seed)
    out = Path(tc.out)
    out.mkdir(parents=True, exist_ok=True)

    # Data: validation never overlaps test. Served logs come split by time; otherwise the
    # validation users are carved out of train.
    tables = load_tables(tc.data, tc.max_history, tc.seed)
    schema = infer_schema(tables.train)
    if tables.valid is not None:
        fit_table, valid_table = tables.train, tables.valid
    else:
        is_valid = split_by_user(tables.train["user_id"].to_numpy(), tc.valid_fraction, tc.seed)
        fit_table, valid_table = tables.train.filter(~is_valid), tables.train.filter(is_valid)
    columns = vocab_columns(fit_table, schema)
    if tc.init_from:
        start = Checkpoint.load(str(Path(tc.init_from) / "ckpt.pt"))
        if start.space.schema != schema:
            raise ValueError(f"--init-from {tc.init_from}: its schema {start.space.schema} is not {schema}")
        cfg, space = start.config, start.space.extended(columns)
        model = warm_start(start, space)
        print(f"warm start from {tc.init_from} ({cfg.model}; its architecture, new ids added)")
    else:
        space = FeatureSpace.build(schema, columns)
        model = build_model(cfg, space)
    fit, valid, test = (encode(t, space, tc.max_history) for t in (fit_table, valid_table, tables.test))
    print(
        f"data {tables.source}: fit {len(fit)}, valid {len(valid)}, test {len(test)} samples; schema {schema}"
    )

    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"gauc": -1.0}
    best_epoch = 0
    best_state = copy.deepcopy(model.state_dict())
    for epoch in range(1, tc.epochs + 1):
        t0 = time.perf_counter()
        batches = fit.batches(tc.batch_size, rng)
        loss, seen = train_epoch(model, opt, batches, -(-len(fit) // tc.batch_size), tc, f"epoch {epoch}")
        seconds = time.perf_counter() - t0
        metrics = evaluate(valid.user, valid.label, predict(model, valid))
        history.append(
            {"epoch": epoch, "train_loss": loss, "seconds": seconds, "samples": seen, "valid": metrics}
        )
        print(f"epoch {epoch}: loss {loss:.4f}, {seconds:.1f}s, valid " + _fmt(metrics))
        if metrics["gauc"] > best["gauc"]:
            best, best_epoch, best_state = metrics, epoch, copy.deepcopy(model.state_dict())
        elif epoch - best_epoch >= tc.patience:
            print(f"early stop: no better validation GAUC for {tc.patience} epochs")
            break

    model.load_state_dict(best_state)
    test_metrics = evaluate(test.user, test.label, predict(model, test))
    print(f"best epoch {best_epoch}; test " + _fmt(test_metrics))
    result = {
        "data": tables.source,
        "test": test_metrics,
        "valid": best,
        "best_epoch": best_epoch,
        "epoch_seconds": float(np.mean([h["seconds"] for h in history])),
        "samples_per_second": float(np.mean([h["samples"] / h["seconds"] for h in history])),
        "processes": 1,
        "config": {"model": cfg.to_dict(), "train": asdict(tc)},
        "history": history,
    }
    extra = {k: result[k] for k in ("data", "test", "valid", "best_epoch")} | {"max_history": tc.max_history}
    Checkpoint(cfg, space, model.state_dict(), extra=extra).save(str(out / "ckpt.pt"))
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    plot_curves(history, out / "curves.png", title=f"{cfg.model} on {tables.source}")
    return result


def plot_curves(history: list[dict[str, Any]], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train logloss")
    ax1.plot(epochs, [h["valid"]["logloss"] for h in history], "o-", label="valid logloss")
    ax2.plot(epochs, [h["valid"]["auc"] for h in history], "o-", label="valid AUC")
    ax2.plot(epochs, [h["valid"]["gauc"] for h in history], "o-", label="valid GAUC")
    for ax in (ax1, ax2):
        ax.set_xlabel("epoch")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _fmt(m: dict[str, float]) -> str:
    return f"AUC {m['auc']:.4f} GAUC {m['gauc']:.4f} logloss {m['logloss']:.4f}"


def parse_args(argv: list[str] | None = None) -> tuple[DINConfig, TrainConfig]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for dc in (TrainConfig(), DINConfig()):
        for name, default in asdict(dc).items():
            flag = "--" + name.replace("_", "-")
            if isinstance(default, bool):
                p.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
            elif isinstance(default, tuple):
                p.add_argument(flag, type=int, nargs="+", default=list(default), metavar="UNITS")
            else:
                p.add_argument(flag, type=type(default), default=default)
    p.set_defaults(model="din")
    a = vars(p.parse_args(argv))
    model_fields = DINConfig().to_dict()
    cfg = DINConfig.from_dict({k: a[k] for k in model_fields})
    tc = TrainConfig(**{k: a[k] for k in asdict(TrainConfig())})
    _validate(p, cfg, tc)
    return cfg, tc


def _validate(p: argparse.ArgumentParser, cfg: DINConfig, tc: TrainConfig) -> None:
    choices = {
        "--model": (cfg.model, ("din", "base")),
        "--activation": (cfg.activation, ("dice", "prelu")),
        "--attention-activation": (cfg.attention_activation, ("dice", "prelu")),
        "--regularization": (cfg.regularization, ("mba", "l2", "none")),
        "--base-pooling": (cfg.base_pooling, ("sum", "mean")),
    }
    for flag, (choice, allowed) in choices.items():
        if choice not in allowed:
            p.error(f"{flag} must be one of {', '.join(allowed)}; got {choice!r}")
    positive = {
        "--epochs": tc.epochs,
        "--batch-size": tc.batch_size,
        "--max-history": tc.max_history,
        "--embed-dim": cfg.embed_dim,
        "--patience": tc.patience,
    }
    for flag, value in positive.items():
        if value < 1:
            p.error(f"{flag} must be >= 1; got {value}")
    if not 0 < tc.valid_fraction < 1:
        p.error(f"--valid-fraction must be between 0 and 1; got {tc.valid_fraction}")
    if tc.lr <= 0 or cfg.reg_lambda < 0:
        p.error("--lr must be > 0 and --reg-lambda >= 0")
    if tc.data != "synthetic" and not Path(tc.data).is_dir():
        p.error(f"--data {tc.data}: no such folder (or use --data synthetic)")
    if tc.shuffle_buffer < 1 or tc.loader_workers < 0:
        p.error("--shuffle-buffer must be >= 1 and --loader-workers >= 0")
    if tc.stream or world_size() > 1:
        if tc.init_from:
            p.error("--init-from is not supported with streaming (--stream or torchrun) yet")
        try:
            streaming_sources(tc.data)
        except (ValueError, OSError):
            p.error("streaming reads Parquet: give --data a folder with train and test Parquet")
    if tc.init_from and not (Path(tc.init_from) / "ckpt.pt").is_file():
        p.error(f"--init-from {tc.init_from}: no ckpt.pt there (give a model.train --out folder)")


def main(argv: list[str] | None = None) -> None:
    cfg, tc = parse_args(argv)
    run(cfg, tc)


if __name__ == "__main__":
    main()
