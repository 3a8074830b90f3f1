"""Training on data that does not fit in memory, on one process or many:

    python -m model.train --data DIR --stream                       # one process, streaming
    torchrun --nproc-per-node 2 -m model.train --data DIR           # DistributedDataParallel

``DIR`` holds ``train`` and ``test`` as Parquet (files or folders of files) in the sample layout.
Under torchrun (WORLD_SIZE > 1) each rank trains DistributedDataParallel on its shard of the
training rows (``model.stream``): gloo on CPU, NCCL when every rank has a GPU. ``--batch-size`` is
the global batch: each rank takes its share, so one process and K processes take the same steps.
Ranks whose shard ends first join the others' remaining steps (``torch.distributed.algorithms.
join``), so every row is trained on once per epoch. The vocabularies come from one streaming pass,
the same on every rank; validation is the in-memory path's users, held out by user. Validation and
test predictions of every rank are gathered, so each rank computes the exact GAUC and all take the
same early-stopping decision. Rank 0 alone writes the checkpoint, metrics and curves; the metrics
record whether every rank had the same vocabulary, and the same weights after the first step and
at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.algorithms.join import Join
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from model.config import DINConfig, TrainConfig, world_size
from model.data import split_by_user
from model.din import DIN, Checkpoint, build_model
from model.evaluation import evaluate
from model.loop import fit_epochs, fmt, save_run, train_epoch
from model.sources import sources
from model.stream import (
    ShuffledBatches,
    of_users,
    predict_stream,
    read_units,
    schema_of,
    units,
    users_of,
    vocab_space,
)


def _gather(value: Any) -> list[Any]:
    if not dist.is_initialized():
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _metrics(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
    users, labels, preds = (np.concatenate([p[i] for p in parts]) for i in range(3))
    return evaluate(users, labels, preds)


def weights_digest(model: torch.nn.Module) -> str:
    """A hash of the parameters. Buffers (BatchNorm's running statistics) are left out: each rank
    updates its own in a step, and DDP gives every rank rank 0's at the start of the next forward."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.named_parameters()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def run_streaming(cfg: DINConfig, tc: TrainConfig) -> dict[str, Any]:
    """``model.train.run`` for streamed data (``tc`` is its TrainConfig)."""
    world = world_size()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.manual_seed(tc.seed)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    torch.set_num_threads(tc.threads or max(1, (os.cpu_count() or 1) // world))
    train_src, test_src = sources(tc.data)
    out = Path(tc.out)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)

    schema = schema_of(train_src)
    users = users_of(train_src)
    valid_users = users[split_by_user(users, tc.valid_fraction, tc.seed)]
    space = vocab_space(train_src, schema, exclude_users=valid_users, min_count=tc.min_count)
    model: torch.nn.Module = build_model(cfg, space)
    if world > 1:
        model = DistributedDataParallel(model)
    din = cast(DIN, model.module if isinstance(model, DistributedDataParallel) else model)
    per_rank = max(2, tc.batch_size // world)
    fit = ShuffledBatches(
        train_src,
        space,
        tc.max_history,
        per_rank,
        rank,
        world,
        tc.shuffle_buffer,
        tc.seed,
        drop_users=valid_users,
    )
    loader = DataLoader(fit, batch_size=None, num_workers=tc.loader_workers)
    train_units, test_units = units(train_src), units(test_src)
    if rank == 0:
        print(
            f"data {tc.data} (streamed, {world} process(es), {len(train_units)} train units): "
            f"{len(users)} users, {len(valid_users)} validate; schema {schema}",
            flush=True,
        )

    def shard_predictions(table_units: list[Any], keep: np.ndarray | None) -> tuple[np.ndarray, ...]:
        tables = (of_users(t, keep, keep=True) for t in read_units(table_units[rank::world]))
        return predict_stream(din, tables, space, tc.max_history)

    same_vocabulary = len(set(_gather(hashlib.sha256(json.dumps(space.to_dict()).encode()).hexdigest()))) == 1
    if not same_vocabulary:
        raise RuntimeError("the ranks built different vocabularies from the same table")
    after_first_step: dict[str, bool] = {}

    def compare_weights() -> None:  # a collective: every rank takes its first step together
        after_first_step["same"] = len(set(_gather(weights_digest(din)))) == 1

    check_first = len(train_units) >= world  # each rank has rows to take a first step with

    opt = torch.optim.Adam(model.parameters(), lr=tc.lr)

    def one_epoch(epoch: int) -> tuple[float, int]:
        fit.set_epoch(epoch)
        first = compare_weights if epoch == 1 and check_first else None
        with Join([cast(DistributedDataParallel, model)]) if world > 1 else contextlib.nullcontext():
            loss, seen = train_epoch(model, opt, loader, None, tc, f"epoch {epoch} rank {rank}", first)
        seen_by_rank = _gather(seen)
        return float(np.average(_gather(loss), weights=np.maximum(seen_by_rank, 1))), sum(seen_by_rank)

    def say(line: str) -> None:
        if rank == 0:
            print(line, flush=True)

    fitted = fit_epochs(
        model, opt, tc, one_epoch, lambda: _metrics(_gather(shard_predictions(train_units, valid_users))), say
    )
    same_weights = len(set(_gather(weights_digest(din)))) == 1
    test_metrics = _metrics(_gather(shard_predictions(test_units, None)))
    result = fitted.result(f"{Path(tc.data).resolve()} (streamed)", test_metrics, cfg, tc, processes=world)
    result |= {
        "ranks_same_vocabulary": same_vocabulary,
        "ranks_same_weights_after_first_step": after_first_step.get("same"),
        "ranks_same_weights": same_weights,
    }
    if rank == 0:
        print(f"best epoch {fitted.best_epoch}; test " + fmt(test_metrics))
        title = f"{cfg.model} on {tc.data} ({world} process(es))"
        save_run(out, Checkpoint(cfg, space, din.state_dict()), tc, result, title)
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return result
