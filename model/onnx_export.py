"""A trained run -> a self-contained model bundle (see contracts/bundle.py); ``python -m model.export``
is its command line.

The export is only published if onnxruntime's scores equal the torch training graph's within
``--tolerance`` on ragged histories (L = 0 .. max_history), 1 and 1000 candidates, unknown ids,
and R = 1 and R = 8 requests. The bundle directory appears atomically: it is written next to its
final path and renamed into place, so a reader never sees half a bundle.

Tracing the serving graph to ONNX takes seconds and depends only on the architecture, so traced
graphs are kept in ``$DIN_EXPORT_CACHE`` (default ``~/.cache/din-serve/onnx``; empty for none) and
the next export of the same architecture, a daily retrain's, swaps its weights in. The parity check
judges the result either way; a cached graph that fails it is traced again.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import onnxruntime as ort
import onnxscript
import torch
from onnxscript import ir, optimizer

from contracts.bundle import MANIFEST_FILE, MODEL_FILE, SPACE_FILE, load_bundle, session_options, sha256
from contracts.feeds import DEFAULT_OPSET, INPUTS, OUTPUTS, Feeds, Inputs, dynamic_axes, signature
from contracts.schema import FeatureSpace
from contracts.settings import tools
from model.din import DIN, BaseModel, Batch, Checkpoint, pooling_weights
from model.serving import ServingGraph, ServingInputs


def random_inputs(
    space: FeatureSpace,
    lengths: list[int],
    n_per_request: list[int],
    width: int,
    seed: int,
    oov_share: float = 0.0,
) -> ServingInputs:
    """R = len(lengths) requests; ids drawn from each vocabulary, a share replaced by the OOV index."""
    g = torch.Generator().manual_seed(seed)
    s, sizes = space.schema, space.sizes()

    def ids(names: tuple[str, ...], *shape: int) -> torch.Tensor:
        if not names:
            return torch.zeros((*shape, 0), dtype=torch.long)
        x = torch.stack([torch.randint(2, max(sizes[n], 3), shape, generator=g) for n in names], -1)
        return torch.where(torch.rand(x.shape, generator=g) < oov_share, torch.ones_like(x), x)

    r, n = len(lengths), sum(n_per_request)
    hist_len = torch.tensor(lengths, dtype=torch.long)
    history = ids(s.behavior, r, width)
    history[torch.arange(width) >= hist_len.unsqueeze(1)] = 0
    request_index = torch.repeat_interleave(torch.arange(r), torch.tensor(n_per_request))
    return ServingInputs(
        ids(s.profile, r), ids(s.context, r), history, hist_len, ids(s.behavior, n), request_index
    )


def tile(x: ServingInputs) -> Batch:
    """The training graph's view: every candidate a separate sample carrying a copy of its history."""
    r = x.request_index
    return Batch(x.profile[r], x.context[r], x.candidate, x.history[r], x.history_len[r])


def reference(model: DIN, x: ServingInputs) -> tuple[np.ndarray, np.ndarray]:
    """CTR and attention [N, L] from the torch training graph, on tiled inputs."""
    b = tile(x)
    with torch.inference_mode():
        ctr = torch.sigmoid(model.calibrated(model(b)))
        n, width = b.history.shape[:2]
        mask = torch.arange(width) < b.history_len.unsqueeze(1)
        rows, cols = mask.nonzero(as_tuple=True)
        attention = torch.zeros(n, width)
        if isinstance(model, BaseModel):
            attention[rows, cols] = pooling_weights(model.cfg.base_pooling, b.history_len)[rows]
        else:
            v = model.embed_fields(b.candidate, model.schema.behavior)
            e = model.embed_fields(b.history[rows, cols], model.schema.behavior)
            attention[rows, cols] = model.attention_weights(e, rows, v)
    return ctr.numpy(), attention.numpy()


def parity_cases(space: FeatureSpace, max_history: int) -> dict[str, ServingInputs]:
    m = max_history
    return {
        "R=1, N=1, L=0 (new user)": random_inputs(space, [0], [1], 0, seed=1),
        "R=1, N=1000, ragged up to max_history": random_inputs(space, [m], [1000], m, seed=2),
        "R=1, N=200, L=5 padded to max_history": random_inputs(space, [5], [200], m, seed=3),
        "R=1, N=20, fewer candidates than history slots": random_inputs(space, [m - 7], [20], m, seed=6),
        "R=8, ragged incl. 0 and max_history": random_inputs(
            space, [0, 1, 2, m // 2, m, 3, m - 1, 7], [1, 3, 50, 20, 2, 1, 9, 14], m, seed=4
        ),
        "R=8, 30% unknown ids": random_inputs(
            space, [m, 4, 0, 9, 1, 2, 3, m], [5] * 8, m, seed=5, oov_share=0.3
        ),
    }


def as_feeds(x: ServingInputs) -> Feeds:
    """The same inputs as onnxruntime takes them."""
    return Inputs(*(t.numpy() for t in x))


def measure_parity(model: DIN, session: ort.InferenceSession, max_history: int) -> dict[str, float]:
    errors = {"ctr": 0.0, "attention": 0.0}
    for name, x in parity_cases(model.space, max_history).items():
        ctr, attention = session.run(list(OUTPUTS), as_feeds(x)._asdict())
        ref_ctr, ref_attention = reference(model, x)
        if not (np.isfinite(ctr).all() and np.isfinite(attention).all()):
            raise ValueError(f"parity case {name!r}: onnxruntime produced NaN or inf")
        errors["ctr"] = max(errors["ctr"], float(np.abs(ctr - ref_ctr).max(initial=0)))
        errors["attention"] = max(
            errors["attention"], float(np.abs(attention - ref_attention).max(initial=0))
        )
    return errors


def default_cache() -> Path | None:
    """Where traced serving graphs are kept: ``DIN_EXPORT_CACHE`` (empty: nowhere), else the user's
    cache folder."""
    chosen = tools().export_cache
    if chosen is not None:
        return Path(chosen) if chosen else None
    try:
        home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:  # no home directory (a container user without one): no cache
        return None
    return home / "din-serve" / "onnx"


GRAPH_VERSION = 2  # the serving graph's own code: 2 calibrates the CTR


def graph_key(model: DIN, opset: int) -> str:
    """What the traced graph depends on: the architecture, the feature fields, the opset and the
    exporter. Not the weights, nor the vocabulary sizes (the tables are gathered from, whatever
    their length)."""
    what = {"model": model.cfg.to_dict(), "schema": model.schema.to_dict(), "kind": type(model).__name__,
            "opset": opset, "torch": torch.__version__, "onnxscript": onnxscript.__version__,
            "graph": GRAPH_VERSION}  # fmt: skip
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:32]


def trace(graph: ServingGraph, path: Path, opset: int) -> None:
    """The serving graph traced to ONNX as is: every initializer one of the graph's own tensors,
    under its name, nothing folded, so that another model of the same architecture can take it
    over by swapping them."""
    example = random_inputs(graph.model.space, [3, 1], [4, 2], 5, seed=0)
    # The exporter narrates and warns about internals users cannot act on; keep the CLI quiet.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            tuple(example),
            str(path),
            input_names=list(INPUTS),
            output_names=list(OUTPUTS),
            dynamic_axes=dynamic_axes(),
            opset_version=opset,
            external_data=False,
            dynamo=True,
            optimize=False,
        )


def export_onnx(
    model: DIN, path: Path, opset: int = DEFAULT_OPSET, cache: Path | None = None, retrace: bool = False
) -> bool:
    """Writes the serving graph of ``model`` to ``path``, optimised as torch.onnx would (constant
    folding, redundancies removed). Tracing takes seconds (the graph's torch.cond branches are
    traced several times over) and depends only on the architecture, so a traced graph is kept in
    ``cache`` and a later export of the same architecture swaps its weights in. Returns whether it
    came from the cache; export_bundle's parity check judges either way, and ``retrace`` replaces
    a cached graph that failed it."""
    graph = ServingGraph(model).eval()
    weights = {name: t.detach().cpu().numpy() for name, t in graph.state_dict().items()}
    cached = cache / f"{graph_key(model, opset)}.onnx" if cache is not None else None
    usable = cached is not None and cached.exists() and not retrace
    onnx_model = load_traced(cached, weights) if cached is not None and usable else None
    hit = onnx_model is not None
    if onnx_model is None:
        with tempfile.TemporaryDirectory() as tmp:
            trace(graph, Path(tmp) / MODEL_FILE, opset)
            onnx_model = ir.load(Path(tmp) / MODEL_FILE)
            if cached is not None:
                keep(Path(tmp) / MODEL_FILE, cached)
    optimizer.optimize_ir(onnx_model)
    ir.save(onnx_model, path)
    return hit


def load_traced(path: Path, weights: dict[str, np.ndarray]) -> ir.Model | None:
    """The traced graph at ``path`` with ``weights`` in place of its own; None when a tensor it
    holds is not among them or differs in rank or type (then it is traced again)."""
    try:
        onnx_model = ir.load(path)
    except Exception:  # a damaged cache entry is traced again, not trusted
        return None
    for name, value in onnx_model.graph.initializers.items():
        new = weights.get(name)
        old = value.const_value
        if new is None or old is None or new.ndim != len(old.shape) or new.dtype != old.dtype.numpy():
            return None
        value.const_value = ir.tensor(new, name=name)
        value.shape = ir.Shape(new.shape)
    return onnx_model


def keep(traced: Path, cached: Path) -> None:
    """Stores a traced graph in the cache (written aside and renamed, so a reader never sees half
    of one); a cache that cannot be written is skipped."""
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        part = cached.with_suffix(f".{os.getpid()}.part")
        shutil.copyfile(traced, part)
        part.replace(cached)
    except OSError:
        pass


def check_written(model: DIN, folder: Path, max_history: int) -> dict[str, float]:
    """The parity of the graph just written to ``folder``, which must hold nothing else."""
    if list(folder.iterdir()) != [folder / MODEL_FILE]:
        raise RuntimeError(
            f"the exporter wrote more than {MODEL_FILE}: {sorted(p.name for p in folder.iterdir())}"
        )
    session = ort.InferenceSession(str(folder / MODEL_FILE), session_options())
    return measure_parity(model, session, max_history)


def export_bundle(
    ckpt_path: Path,
    bundle: Path,
    opset: int = DEFAULT_OPSET,
    version: str | None = None,
    tolerance: float = 1e-5,
    cache: Path | Literal["default"] | None = "default",
) -> dict[str, Any]:
    """``cache``: where traced graphs are kept (``default_cache()`` by default, None for nowhere)."""
    cache = default_cache() if cache == "default" else cache
    ckpt = Checkpoint.load(str(ckpt_path))
    model = ckpt.build()
    max_history = ckpt.max_history
    if bundle.exists():
        raise FileExistsError(f"--bundle {bundle} already exists; bundles are immutable, pick a new version")
    bundle.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.", dir=bundle.parent))
    try:
        from_cache = export_onnx(model, tmp / MODEL_FILE, opset, cache)
        parity = check_written(model, tmp, max_history)
        if from_cache and max(parity.values()) > tolerance:  # the cached graph did not fit: trace it
            export_onnx(model, tmp / MODEL_FILE, opset, cache, retrace=True)
            parity = check_written(model, tmp, max_history)
        if max(parity.values()) > tolerance:
            raise ValueError(f"parity check failed: max abs error {parity} > {tolerance}; bundle not written")
        (tmp / SPACE_FILE).write_text(json.dumps(ckpt.space.to_dict()))
        manifest = {
            "version": version or datetime.now(UTC).strftime("%Y%m%d-%H%M%S"),
            "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "checkpoint": str(ckpt_path.resolve()),
            "run": str(ckpt_path.resolve().parent),  # what --init-from serving starts from
            "training": {k: ckpt.extra.get(k) for k in ("data", "data_arg", "test", "valid", "best_epoch")},
            "model": ckpt.config.to_dict(),
            "max_history": max_history,
            "opset": opset,
            "signature": signature(ckpt.space.schema),
            "parity_max_abs_error": parity,
            "sha256": {name: sha256(tmp / name) for name in (MODEL_FILE, SPACE_FILE)},
        }
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
        load_bundle(tmp)  # the same validation the service runs, before anyone can see it
        tmp.chmod(0o755)  # mkdtemp makes it private; the serving user must read it
        tmp.rename(bundle)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest
