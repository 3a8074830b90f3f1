"""A model bundle: the serving graph plus what is needed to feed it, readable without torch.

    DIR/model.onnx      the serving graph, one file (no external-data sidecar)
    DIR/space.json      feature schema and vocabularies (raw id -> index)
    DIR/manifest.json   version, creation time, training data and metrics, opset, signature,
                        parity error measured at export, and a sha256 of each file

``load_bundle`` refuses anything it could not serve correctly: a missing or altered file, an ONNX
model that fails ``onnx.checker``, a signature that does not match the schema, or a smoke
inference that does not give one probability per candidate.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from contracts.feeds import OUTPUTS, Feeds, signature, smoke
from contracts.schema import FeatureSpace

MODEL_FILE, SPACE_FILE, MANIFEST_FILE = "model.onnx", "space.json", "manifest.json"


class BundleError(Exception):
    """The bundle cannot be served; the message says which file or check failed."""


@dataclass
class Bundle:
    path: Path
    space: FeatureSpace
    manifest: dict[str, Any]
    session: ort.InferenceSession

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def max_history(self) -> int:
        return int(self.manifest["max_history"])

    def run(self, feeds: Feeds, with_attention: bool = False) -> list[np.ndarray]:
        return self.session.run(list(OUTPUTS) if with_attention else ["ctr"], feeds._asdict())


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def session_options(intra_threads: int = 0, inter_threads: int = 1) -> ort.SessionOptions:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.intra_op_num_threads = intra_threads
    opts.inter_op_num_threads = inter_threads
    # Idle pool threads would otherwise spin between runs, on the cores the event loop needs.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def load_bundle(path: str | Path, options: ort.SessionOptions | None = None) -> Bundle:
    path = Path(path)
    try:
        manifest = json.loads((path / MANIFEST_FILE).read_text())
        space = FeatureSpace.from_dict(json.loads((path / SPACE_FILE).read_text()))
    except FileNotFoundError as e:
        raise BundleError(f"{path}: missing {Path(e.filename).name}") from e
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise BundleError(f"{path}: unreadable manifest or space: {e}") from e
    for name, digest in manifest.get("sha256", {}).items():
        if not (path / name).exists():
            raise BundleError(f"{path}: missing {name}")
        if sha256(path / name) != digest:
            raise BundleError(
                f"{path}: {name} does not match the sha256 in {MANIFEST_FILE} (corrupt or altered)"
            )
    import onnx  # the checker only: importing onnx costs a command's start half a second

    try:
        onnx.checker.check_model(str(path / MODEL_FILE), full_check=True)
    except Exception as e:  # the checker raises ValidationError, InferenceError or a protobuf DecodeError
        raise BundleError(f"{path}: {MODEL_FILE} fails onnx.checker: {e}") from e
    try:
        session = ort.InferenceSession(str(path / MODEL_FILE), options or session_options())
    except Exception as e:  # onnxruntime raises its own untyped errors
        raise BundleError(f"{path}: onnxruntime cannot load {MODEL_FILE}: {e}") from e
    _check_signature(path, session, space)
    bundle = Bundle(path, space, manifest, session)
    ctr, attention = bundle.run(smoke(space.schema), with_attention=True)
    if ctr.shape != (2,) or not np.all((ctr > 0) & (ctr < 1)) or attention.shape != (2, 1):
        raise BundleError(f"{path}: smoke inference gave ctr {ctr!r}, expected 2 probabilities")
    return bundle


def _check_signature(path: Path, session: ort.InferenceSession, space: FeatureSpace) -> None:
    want = signature(space.schema)
    got_in = {i.name: i for i in session.get_inputs()}
    got_out = {o.name: o for o in session.get_outputs()}
    if set(got_in) != set(want["inputs"]) or set(got_out) != set(want["outputs"]):
        raise BundleError(
            f"{path}: graph inputs {sorted(got_in)} / outputs {sorted(got_out)} do not match the serving "
            f"signature {sorted(want['inputs'])} / {sorted(want['outputs'])}"
        )
    for name, (dtype, shape) in {**want["inputs"], **want["outputs"]}.items():
        arg = got_in.get(name) or got_out[name]
        fixed = [d if isinstance(d, int) else None for d in shape]
        actual = [d if isinstance(d, int) else None for d in arg.shape]
        if arg.type != f"tensor({'float' if dtype == 'float32' else dtype})" or actual != fixed:
            raise BundleError(
                f"{path}: {name} is {arg.type} {arg.shape}, but the schema needs {dtype} {shape} "
                "(the model and space.json disagree)"
            )
