"""Train DIN or the BaseModel and report the paper's metrics.

    python -m model.train --data ../shared/data/amazon-sports --model din --out runs/din

In memory (``model.loop``), or streamed past memory with ``--stream`` or under ``torchrun
--nproc-per-node K`` (``model.distributed``). Writes OUT/{ckpt.pt, metrics.json, curves.png}.
The options are ``model.config``'s; torch is imported only once they are checked.
"""

from __future__ import annotations

from typing import Any

from model.config import DINConfig, TrainConfig, parse_args, world_size


def run(cfg: DINConfig, tc: TrainConfig) -> dict[str, Any]:
    """One training run; the metrics it wrote to ``tc.out``."""
    if tc.stream or world_size() > 1:
        from model.distributed import run_streaming

        return run_streaming(cfg, tc)
    from model.loop import run_in_memory

    return run_in_memory(cfg, tc)


def main(argv: list[str] | None = None) -> None:
    cfg, tc = parse_args(argv)
    run(cfg, tc)


if __name__ == "__main__":
    main()
