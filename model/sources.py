"""Where a streamed run's Parquet lives: ``train`` and ``test`` as files or folders of files.

Torch-free, so the command line checks ``--data`` before it imports torch.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as ds


def files(source: str | Path) -> list[str]:
    """The Parquet files of a file or a folder, in a fixed order."""
    return sorted(f.path for f in ds.dataset(str(source), format="parquet").get_fragments())


def sources(data: str) -> tuple[Path, Path]:
    """The train and test tables of a streaming run (``train.parquet`` or a ``train/`` folder)."""
    root = Path(data)
    found = []
    for split in ("train", "test"):
        for candidate in (root / f"{split}.parquet", root / split):
            if candidate.exists() and files(candidate):
                found.append(candidate)
                break
        else:
            raise ValueError(
                f"--data {data}: streaming needs {split}.parquet or a {split}/ folder of Parquet files"
            )
    return found[0], found[1]
