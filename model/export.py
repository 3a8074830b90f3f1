"""Export a trained run to a self-contained model bundle (see contracts/bundle.py).

    python -m model.export --run runs/din --bundle models/v1

The export is only published if onnxruntime's scores equal the torch training graph's within
``--tolerance`` (``model.onnx_export``, which does the work; its arguments are checked here first,
before torch is imported). The bundle directory appears atomically, so a reader never sees half a
bundle. Traced graphs are cached per architecture in ``$DIN_EXPORT_CACHE`` (default
``~/.cache/din-serve/onnx``; empty for none), so a retrain's export swaps its weights into one.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from contracts.cli import Parser
from contracts.feeds import DEFAULT_OPSET


def main(argv: list[str] | None = None) -> None:
    p = Parser(
        prog="python -m model.export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", type=Path, required=True, help="a model.train --out folder (or a ckpt.pt)")
    p.add_argument("--bundle", type=Path, required=True, help="bundle folder to create; must not exist")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET)
    p.add_argument("--version", help="bundle version (default: UTC time of export)")
    p.add_argument("--tolerance", type=float, default=1e-5, help="max abs CTR/attention error vs torch")
    a = p.parse_args(argv)
    ckpt = a.run / "ckpt.pt" if a.run.is_dir() else a.run
    if not ckpt.exists():
        p.error(f"--run {a.run}: no ckpt.pt (train first: python -m model.train --out {a.run})")
    if a.bundle.exists():
        p.error(f"--bundle {a.bundle} already exists; bundles are immutable, pick a new folder")
    from model.onnx_export import export_bundle

    t0 = time.perf_counter()
    try:
        manifest = export_bundle(ckpt, a.bundle, a.opset, a.version, a.tolerance)
    except ValueError as e:
        p.exit(1, f"export failed: {e}\n")
    print(
        f"wrote {a.bundle} (version {manifest['version']}) in {time.perf_counter() - t0:.1f}s; "
        f"parity max abs error {manifest['parity_max_abs_error']}"
    )


if __name__ == "__main__":
    main()
