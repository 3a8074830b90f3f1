"""The serving contract, defined once: the serving graph's six inputs and two outputs.

``Inputs`` names them in the graph's order with their shapes; the numpy form (``Feeds``) is what
the service and the gate feed onnxruntime, the torch form (``model.serving.ServingInputs``) is what
export traces. The input names, the bundle's signature and the export's dynamic axes are all
derived from ``SHAPES`` here, so a new input touches this file and the graph, nothing else.

One call scores R requests: each request's profile, context and history once, and its candidates
flattened into N rows that say which request they belong to (``request_index``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Generic, NamedTuple, TypeVar

import numpy as np

from contracts.schema import PAD, FeatureSchema

A = TypeVar("A")  # np.ndarray for onnxruntime, torch.Tensor for export


class Inputs(NamedTuple, Generic[A]):
    profile: A  # [R, P] int64
    context: A  # [R, C] int64
    history: A  # [R, L, F] int64, PAD after history_len
    history_len: A  # [R] int64
    candidate: A  # [N, F] int64
    request_index: A  # [N] int64, the request each candidate belongs to


Feeds = Inputs[np.ndarray]

# R requests, N candidates, L history slots; P, C, F are the schema's group sizes.
SHAPES: dict[str, tuple[str, ...]] = {
    "profile": ("R", "P"),
    "context": ("R", "C"),
    "history": ("R", "L", "F"),
    "history_len": ("R",),
    "candidate": ("N", "F"),
    "request_index": ("N",),
    "ctr": ("N",),  # probabilities
    "attention": ("N", "L"),  # weight of each behaviour for each candidate, 0 on padding
}
INPUTS: tuple[str, ...] = Inputs._fields
OUTPUTS = ("ctr", "attention")
DEFAULT_OPSET = 18  # the ONNX opset the serving graph is exported with
DYNAMIC = ("R", "N", "L")


def signature(schema: FeatureSchema) -> dict[str, Any]:
    """Input and output names, dtypes and shapes the schema implies (symbolic dims as strings)."""
    sizes = {"P": len(schema.profile), "C": len(schema.context), "F": len(schema.behavior)}

    def entry(name: str) -> list[Any]:
        dtype = "float32" if name in OUTPUTS else "int64"
        return [dtype, [sizes.get(d, d) for d in SHAPES[name]]]

    return {"inputs": {n: entry(n) for n in INPUTS}, "outputs": {n: entry(n) for n in OUTPUTS}}


def dynamic_axes() -> dict[str, dict[int, str]]:
    """For torch.onnx.export: which axis of each input and output is symbolic."""
    return {name: {i: d for i, d in enumerate(shape) if d in DYNAMIC} for name, shape in SHAPES.items()}


def one_request(
    profile: np.ndarray, context: np.ndarray, history: np.ndarray, candidate: np.ndarray
) -> Feeds:
    """R = 1 from index rows: profile [P], context [C], history [L, F], candidate [N, F]. The
    history is padded to at least one slot (the graph's L is never 0)."""
    length = len(history)
    padded = np.full((1, max(length, 1), history.shape[1]), PAD, dtype=np.int64)
    padded[0, :length] = history
    return Inputs(
        profile[None],
        context[None],
        padded,
        np.array([length], dtype=np.int64),
        candidate,
        np.zeros(len(candidate), dtype=np.int64),
    )


def one_candidate_per_request(
    profile: np.ndarray,
    context: np.ndarray,
    history: np.ndarray,
    history_len: np.ndarray,
    candidate: np.ndarray,
) -> Feeds:
    """R rows, each a request with one candidate (the offline gate's shape)."""
    width = max(int(history_len.max(initial=0)), 1)
    return Inputs(
        profile,
        context,
        history[:, :width].astype(np.int64),
        history_len,
        candidate,
        np.arange(len(candidate), dtype=np.int64),
    )


def concat(requests: Sequence[Feeds]) -> Feeds:
    """Several R = 1 feeds as one R = len(requests) call; histories padded to the longest."""
    width = max(f.history.shape[1] for f in requests)
    histories = [
        np.pad(f.history, ((0, 0), (0, width - f.history.shape[1]), (0, 0)), constant_values=PAD)
        for f in requests
    ]
    return Inputs(
        np.concatenate([f.profile for f in requests]),
        np.concatenate([f.context for f in requests]),
        np.concatenate(histories),
        np.concatenate([f.history_len for f in requests]),
        np.concatenate([f.candidate for f in requests]),
        np.concatenate([np.full(len(f.candidate), r, dtype=np.int64) for r, f in enumerate(requests)]),
    )


def split(outputs: list[np.ndarray], requests: Sequence[Feeds]) -> list[list[np.ndarray]]:
    """Per-request outputs of a ``concat`` call; attention is cut back to each request's width."""
    ends = np.cumsum([len(f.candidate) for f in requests])
    starts = np.r_[0, ends[:-1]]
    result = []
    for f, s, e in zip(requests, starts, ends, strict=True):
        per = [outputs[0][s:e]]
        if len(outputs) > 1:
            per.append(outputs[1][s:e, : f.history.shape[1]])
        result.append(per)
    return result


def smoke(schema: FeatureSchema, n_candidates: int = 2, history: int = 1) -> Feeds:
    """One request of ``n_candidates`` and ``history`` behaviours, every id "unknown"."""
    f = len(schema.behavior)
    return one_request(
        np.ones(len(schema.profile), dtype=np.int64),
        np.ones(len(schema.context), dtype=np.int64),
        np.ones((history, f), dtype=np.int64),
        np.ones((n_candidates, f), dtype=np.int64),
    )
