"""The baseline's model files, from a training checkpoint: a plain ``torch.onnx.export`` of DIN's
training graph (every candidate a sample carrying its own copy of the history, as DeepCTR-style
code scores) and the vocabularies as Python dicts.

    python devtools/baseline/export.py --ckpt runs/din/ckpt.pt --out runs/baseline

Writes OUT/model.onnx and OUT/meta.json ({"schema", "max_history", "vocab": {feature: {"type":
"int" or "str", "ids": {raw id: index}}}}). scripts/bench_model.py times the same graph.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import warnings
from pathlib import Path

import torch
from torch import Tensor

from contracts.schema import N_RESERVED
from model.din import DIN, Batch, Checkpoint
from model.onnx_export import random_inputs, tile


class TiledTrainingGraph(torch.nn.Module):
    """The training graph with a flat signature, as a plain export sees it."""

    def __init__(self, model: DIN):
        super().__init__()
        self.model = model

    def forward(
        self, profile: Tensor, context: Tensor, candidate: Tensor, history: Tensor, history_len: Tensor
    ) -> Tensor:
        return torch.sigmoid(
            self.model.calibrated(self.model(Batch(profile, context, candidate, history, history_len)))
        )


def export_tiled(model: DIN, path: Path) -> None:
    example = tile(random_inputs(model.space, [4, 2], [3, 2], 4, seed=0))
    axes = {"profile": {0: "B"}, "context": {0: "B"}, "candidate": {0: "B"}, "history": {0: "B", 1: "L"}}
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            TiledTrainingGraph(model).eval(),
            tuple(example),
            str(path),
            input_names=["profile", "context", "candidate", "history", "history_len"],
            output_names=["ctr"],
            dynamic_axes=axes | {"history_len": {0: "B"}},
            external_data=False,
            dynamo=True,
        )


def export_baseline(ckpt: Path, out: Path) -> Path:
    c = Checkpoint.load(str(ckpt))
    out.mkdir(parents=True, exist_ok=True)
    export_tiled(c.build(), out / "model.onnx")
    vocab = {
        name: {
            "type": "str" if v.is_string else "int",
            "ids": {str(k): i + N_RESERVED for i, k in enumerate(v.keys.tolist())},
        }
        for name, v in c.space.vocabs.items()
    }
    meta = {
        "schema": c.space.schema.to_dict(),
        "max_history": c.max_history,
        "vocab": vocab,
    }
    (out / "meta.json").write_text(json.dumps(meta))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ckpt", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    print(export_baseline(a.ckpt, a.out))


if __name__ == "__main__":
    main()
