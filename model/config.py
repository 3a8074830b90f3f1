"""What a training run is told: the model's hyper-parameters (``DINConfig``, saved in every
checkpoint) and the run's own settings (``TrainConfig``), and the command line that fills both.

Torch-free, so ``python -m model.train`` and ``scripts/redeploy.py`` answer a bad argument before
they import torch.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from contracts.cli import Parser

SERVING = "serving"  # --init-from serving: the run of the version the model repository serves


@dataclass
class DINConfig:
    model: str = "din"  # "din" (attention pooling) or "base" (sum/mean pooling, the paper's BaseModel)
    embed_dim: int = 32  # per feature; a behaviour is the concat of its F field embeddings
    attention_hidden: tuple[int, ...] = (16, 8)  # activation unit MLP; 32-16, 64-16: no better, slower
    mlp_hidden: tuple[int, ...] = (200, 80)  # final MLP, as in the paper
    input_norm: bool = True  # BatchNorm on the final MLP's input, as the reference code does: a raw
    # (unnormalised) attention sum grows with the history, and this keeps its scale in check
    # What that BatchNorm normalises: "behaviors" (the attention sum and the candidate; profile and
    # context embeddings pass as they are) or "all". A profile or context feature with one value in
    # training has no variance to divide by, and under "all" any other value served later saturates
    # the CTR (a model trained on one hour of traffic, served the next).
    norm_scope: str = "behaviors"
    activation: str = "dice"  # "dice" or "prelu", for the final MLP
    attention_activation: str = "prelu"  # the same for the activation unit; Dice there was no better
    # on validation and costs more in serving, where it runs once per behaviour-candidate pair
    attention_softmax: bool = False  # the paper keeps raw weights so interest intensity survives
    base_pooling: str = "sum"  # BaseModel only: "sum" or "mean"
    regularization: str = "mba"  # "mba" (mini-batch aware, eq. 6-7), "l2" (full tables) or "none"
    reg_lambda: float = 1.0  # λ of the chosen regularizer (1.0 beat 0.3 on amazon-sports validation)
    dice_eps: float = 1e-8  # ε of Dice, as in the paper
    dice_momentum: float = 0.1  # running-statistics momentum of Dice

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DINConfig:
        d = dict(d)
        for k in ("attention_hidden", "mlp_hidden"):
            d[k] = tuple(d[k])
        d.setdefault("attention_activation", d.get("activation", "dice"))  # older checkpoints: one for both
        d.setdefault("input_norm", False)
        d.setdefault("norm_scope", "all")  # older checkpoints normalised every input
        return cls(**d)


@dataclass
class TrainConfig:
    data: str = "synthetic"  # "synthetic", {train,test}.parquet, a raw log, or an exported log folder
    # A run folder to start from (its weights and architecture, new ids added), or "serving": the
    # run of the version the model repository ($DIN_MODELS) serves, as its manifest names it.
    init_from: str = ""
    out: str = "runs/din"
    epochs: int = 10  # upper bound; early stopping usually ends sooner
    patience: int = 2  # epochs without a better validation GAUC before stopping
    batch_size: int = 256  # 1024 cost DIN and the BaseModel ~0.01 validation GAUC on amazon-sports
    lr: float = 1e-3  # Adam
    max_history: int = 100  # most recent behaviours kept per sample
    valid_fraction: float = 0.1  # of train users, held out to pick the epoch
    # Share of the ids of each training batch (candidate, history, profile, context) replaced by
    # "unknown", so that the unknown row of every feature learns what an average id of its kind
    # does: a new item, or a context value training never saw, then scores as an ordinary one.
    id_dropout: float = 0.01  # more cost test GAUC on amazon-sports (docs/model.md)
    min_count: int = 1  # ids seen fewer times than this in training are "unknown" (not in the vocabulary)
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = one per core (shared by the processes under torchrun)
    progress: bool = True
    # Streaming (model.distributed): the Parquet train/test of --data read in chunks, never whole.
    # Always on under torchrun (WORLD_SIZE > 1), which shards the rows over the processes.
    stream: bool = False
    shuffle_buffer: int = 100_000  # rows mixed at once when streaming
    loader_workers: int = 0  # DataLoader worker processes per training process when streaming


def data_arg(data: str) -> str:
    """--data as a later command can give it again: "synthetic", or the folder's absolute path."""
    return data if data == "synthetic" else str(Path(data).resolve())


def world_size() -> int:
    """Processes of this run (torchrun sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def parse_args(
    argv: list[str] | None = None, models: str | Path | None = None, prog: str = "python -m model.train"
) -> tuple[DINConfig, TrainConfig]:
    """Both configs from ``model.train``'s options. ``models``: the repository that ``--init-from
    serving`` is resolved in (default $DIN_MODELS); ``prog``: the command named in errors."""
    p = Parser(
        prog=prog,
        description=TRAIN_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
    cfg = DINConfig.from_dict({k: a[k] for k in DINConfig().to_dict()})
    tc = TrainConfig(**{k: a[k] for k in asdict(TrainConfig())})
    _validate(p, cfg, tc, models)
    return cfg, tc


TRAIN_HELP = """Train DIN or the BaseModel and report the paper's metrics.

    python -m model.train --data ../shared/data/amazon-sports --model din --out runs/din
    python -m model.train --data runs/logs --init-from serving --out runs/din-2

--data: "synthetic", a folder with train.parquet and test.parquet, a raw log (interactions.csv.gz
+ items.csv.gz), or a folder written by python -m jobs.feedback export. --init-from: a run folder
(model.train --out) or "serving", the run of the version $DIN_MODELS serves."""


def _validate(p: argparse.ArgumentParser, cfg: DINConfig, tc: TrainConfig, models: str | Path | None) -> None:
    choices = {
        "--model": (cfg.model, ("din", "base")),
        "--activation": (cfg.activation, ("dice", "prelu")),
        "--attention-activation": (cfg.attention_activation, ("dice", "prelu")),
        "--regularization": (cfg.regularization, ("mba", "l2", "none")),
        "--base-pooling": (cfg.base_pooling, ("sum", "mean")),
        "--norm-scope": (cfg.norm_scope, ("behaviors", "all")),
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
    if not 0 <= tc.id_dropout < 0.5 or tc.min_count < 1:
        p.error(f"--id-dropout must be in [0, 0.5) and --min-count >= 1; got {tc.id_dropout}, {tc.min_count}")
    if tc.lr <= 0 or cfg.reg_lambda < 0:
        p.error("--lr must be > 0 and --reg-lambda >= 0")
    if tc.data != "synthetic" and not Path(tc.data).is_dir():
        p.error(f"--data {tc.data}: no such folder (or use --data synthetic)")
    if tc.shuffle_buffer < 1 or tc.loader_workers < 0:
        p.error("--shuffle-buffer must be >= 1 and --loader-workers >= 0")
    if tc.init_from == SERVING:
        from contracts.repository import ModelRepository, RepositoryError
        from contracts.settings import tools

        try:
            tc.init_from = str(ModelRepository(models or tools().models).serving_run())
        except RepositoryError as e:
            p.error(f"--init-from serving: {e}")
    if tc.stream or world_size() > 1:
        if tc.init_from:
            p.error("--init-from is not supported with streaming (--stream or torchrun) yet")
        from model.sources import sources

        try:
            sources(tc.data)
        except (ValueError, OSError):
            p.error("streaming reads Parquet: give --data a folder with train and test Parquet")
    if tc.init_from and not (Path(tc.init_from) / "ckpt.pt").is_file():
        p.error(f"--init-from {tc.init_from}: no ckpt.pt there (give a model.train --out folder, or serving)")
