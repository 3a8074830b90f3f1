"""The training loop in memory, and the pieces the streamed loop (model.distributed) shares.

``python -m model.train`` runs it. Reads top to bottom: data -> vocabularies -> validation split
by user -> epochs with early stopping on validation GAUC -> test metrics of the best epoch ->
OUT/{ckpt.pt, metrics.json, curves.png}. Test is only ever reported; it never picks an epoch or a
hyper-parameter.
"""

from __future__ import annotations

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
from sklearn.linear_model import LogisticRegression
from tqdm import tqdm

from contracts.cli import DataError
from contracts.schema import OOV, PAD, FeatureSchema, FeatureSpace, SchemaFit
from model.config import DINConfig, TrainConfig, data_arg
from model.data import (
    Samples,
    encode,
    infer_schema,
    load_tables,
    split_by_user,
    vocab_columns,
)
from model.din import DIN, Batch, Checkpoint, build_model, warm_start
from model.evaluation import evaluate


def predict(model: DIN, samples: Samples, batch_size: int = 8192) -> np.ndarray:
    model.eval()
    out = []
    with torch.inference_mode():
        for batch, _ in samples.batches(batch_size):
            out.append(torch.sigmoid(model.calibrated(model(batch))).numpy())
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
        if tc.id_dropout > 0:
            batch = drop_ids(batch, tc.id_dropout)
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


def fit_calibration(model: DIN, valid: Samples) -> tuple[float, float] | None:
    """Platt scaling: the scale and bias of the logit that make sigmoid(scale * logit + bias) fit
    the validation slice's clicks best (logloss); set on the model, so its bundle serves them.
    None (and the model left as it was) when the slice does not hold both labels."""
    if len(np.unique(valid.label)) < 2:
        return None
    model.eval()
    with torch.inference_mode():
        logits = np.concatenate([model(batch).numpy() for batch, _ in valid.batches(8192)])
    x = logits.astype(np.float64)
    fitted = LogisticRegression(C=1e6).fit(x[:, None], valid.label)
    scale, bias = float(fitted.coef_[0, 0]), float(fitted.intercept_[0])
    if not scale > 0:
        # A slice too small or too noisy to rank on would turn the ranking upside down; move only
        # the level of the CTRs then, and keep the trained order.
        scale, bias = 1.0, level_shift(x, valid.label)
    model.get_buffer("calibration").copy_(torch.tensor([scale, bias]))
    return scale, bias


def level_shift(logits: np.ndarray, label: np.ndarray) -> float:
    """The bias b that makes sigmoid(logit + b) fit the labels best (logloss): the mean predicted
    CTR equals the observed one, found by Newton's method on the concave log-likelihood."""
    b = 0.0
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(logits + b)))
        step = float((label - p).sum() / max((p * (1 - p)).sum(), 1e-12))
        b += step
        if abs(step) < 1e-10:
            break
    return b


def drop_ids(b: Batch, p: float) -> Batch:
    """Each real id replaced by "unknown" with probability ``p`` (padding stays padding)."""

    def drop(x: torch.Tensor) -> torch.Tensor:
        hit = (torch.rand(x.shape) < p) & (x != PAD)
        return torch.where(hit, torch.full_like(x, OOV), x)

    return Batch(drop(b.profile), drop(b.context), drop(b.candidate), drop(b.history), b.history_len)


def run_in_memory(cfg: DINConfig, tc: TrainConfig) -> dict[str, Any]:
    torch.manual_seed(tc.seed)
    torch.set_num_threads(tc.threads or os.cpu_count() or 1)
    rng = np.random.default_rng(tc.seed)
    out = Path(tc.out)
    out.mkdir(parents=True, exist_ok=True)

    # Data: validation never overlaps test. Served logs come split by time; otherwise the
    # validation users are carved out of train.
    tables = load_tables(tc.data, tc.max_history, tc.seed)
    for note in tables.notes:
        print(f"data: {note}")
    schema = infer_schema(tables.train)
    if tables.valid is not None:
        fit_table, valid_table = tables.train, tables.valid
    else:
        is_valid = split_by_user(tables.train["user_id"].to_numpy(), tc.valid_fraction, tc.seed)
        fit_table, valid_table = tables.train.filter(~is_valid), tables.train.filter(is_valid)
    if tc.init_from:
        start = Checkpoint.load(str(Path(tc.init_from) / "ckpt.pt"))
        schema = warm_start_schema(start.space.schema, schema, tc.init_from)
        strings = {n: v.is_string for n, v in start.space.vocabs.items()}
        cfg, space = start.config, start.space.extended(vocab_columns(fit_table, schema, strings))
        model = warm_start(start, space)
        print(f"warm start from {tc.init_from} ({cfg.model}; its architecture and features, new ids added)")
    else:
        space = FeatureSpace.build(schema, vocab_columns(fit_table, schema), tc.min_count)
        model = build_model(cfg, space)
    fit, valid, test = (encode(t, space, tc.max_history) for t in (fit_table, valid_table, tables.test))
    print(
        f"data {tables.source}: fit {len(fit)}, valid {len(valid)}, test {len(test)} samples; schema {schema}"
    )

    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)
    steps = -(-len(fit) // tc.batch_size)
    fitted = fit_epochs(
        model,
        opt,
        tc,
        lambda epoch: train_epoch(model, opt, fit.batches(tc.batch_size, rng), steps, tc, f"epoch {epoch}"),
        lambda: evaluate(valid.user, valid.label, predict(model, valid)),
    )
    calibration = fit_calibration(model, valid) if tables.valid is not None else None
    if calibration is not None:  # served logs: the CTRs made the click rates they claim to be
        scale, bias = calibration
        print(f"calibration fitted on the validation slice: scale {scale:.3f}, bias {bias:.3f}")
    else:
        print("CTRs not calibrated to served traffic (the data are not served logs)")
    test_metrics = evaluate(test.user, test.label, predict(model, test))
    print(f"best epoch {fitted.best_epoch}; test " + fmt(test_metrics))
    result = fitted.result(tables.source, test_metrics, cfg, tc, processes=1)
    result["calibration"] = {
        "fitted_on": "validation slice" if calibration else None,
        "scale_bias": calibration,
    }
    save_run(out, Checkpoint(cfg, space, model.state_dict()), tc, result, f"{cfg.model} on {tables.source}")
    return result


@dataclass
class Fitted:
    """What the epochs gave: the best epoch by validation GAUC (its weights are the model's now)."""

    history: list[dict[str, Any]]
    best: dict[str, Any]
    best_epoch: int

    def result(
        self, source: str, test: dict[str, float], cfg: DINConfig, tc: TrainConfig, processes: int
    ) -> dict[str, Any]:
        """metrics.json: the test metrics of the best epoch, its validation metrics, the speed."""
        h = self.history
        return {
            "data": source,
            "test": test,
            "valid": self.best,
            "best_epoch": self.best_epoch,
            "epoch_seconds": float(np.mean([e["seconds"] for e in h])),
            "samples_per_second": float(np.mean([e["samples"] / e["seconds"] for e in h])),
            "processes": processes,
            "config": {"model": cfg.to_dict(), "train": asdict(tc)},
            "history": h,
        }


def fit_epochs(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    tc: TrainConfig,
    one_epoch: Callable[[int], tuple[float, int]],
    validate: Callable[[], dict[str, float]],
    say: Callable[[str], None] = print,
) -> Fitted:
    """The one training loop, in memory and streamed: ``one_epoch(epoch)`` trains once over the
    data (the mean loss and the samples seen, over every process), ``validate()`` scores the
    validation users; it stops early after ``tc.patience`` epochs without a better validation GAUC
    and leaves ``model`` with the best epoch's weights. ``model`` may be DistributedDataParallel."""
    din = cast(DIN, model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"gauc": -1.0}
    best_epoch, best_state = 0, copy.deepcopy(din.state_dict())
    for epoch in range(1, tc.epochs + 1):
        t0 = time.perf_counter()
        loss, seen = one_epoch(epoch)
        seconds = time.perf_counter() - t0
        metrics = validate()
        history.append(
            {"epoch": epoch, "train_loss": loss, "seconds": seconds, "samples": seen, "valid": metrics}
        )
        say(
            f"epoch {epoch}: loss {loss:.4f}, {seconds:.1f}s ({seen / seconds:.0f} samples/s), valid "
            + fmt(metrics)
        )
        if metrics["gauc"] > best["gauc"]:
            best, best_epoch, best_state = metrics, epoch, copy.deepcopy(din.state_dict())
        elif epoch - best_epoch >= tc.patience:
            say(f"early stop: no better validation GAUC for {tc.patience} epochs")
            break
    din.load_state_dict(best_state)
    return Fitted(history, best, best_epoch)


def save_run(out: Path, ckpt: Checkpoint, tc: TrainConfig, result: dict[str, Any], title: str) -> None:
    """OUT/ckpt.pt (with what export and a later --bundle or --init-from need to know of the run),
    metrics.json and curves.png."""
    ckpt.extra = {k: result[k] for k in ("data", "test", "valid", "best_epoch")} | {
        "max_history": tc.max_history,
        "data_arg": data_arg(tc.data),
    }
    ckpt.save(str(out / "ckpt.pt"))
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    plot_curves(result["history"], out / "curves.png", title=title)


def warm_start_schema(start: FeatureSchema, data: FeatureSchema, init_from: str) -> FeatureSchema:
    """A warm start keeps the features of the run it starts from. Profile and context features the
    data lacks are trained as missing, and columns it does not take are left out, both said; a
    behaviour field the data lacks cannot be learned from, which is refused."""
    fit = SchemaFit.of(start, data)
    if fit.lacking_behavior:
        raise DataError(
            f"--init-from {init_from}: its model takes the behaviour field(s) {list(fit.lacking_behavior)}, "
            f"which --data lacks (it has {list(data.behavior)}); train without --init-from"
        )
    if fit.lacking:
        print(f"data: no column for {list(fit.lacking)}, which {init_from} takes: trained as missing")
    if fit.ignored:
        print(f"data: {list(fit.ignored)} are not features of {init_from}: left out")
    return start


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


def fmt(m: dict[str, float]) -> str:
    calibration = f" calibration {m['calibration']:.3f} ECE {m['ece']:.4f}" if "ece" in m else ""
    return f"AUC {m['auc']:.4f} GAUC {m['gauc']:.4f} logloss {m['logloss']:.4f}" + calibration
