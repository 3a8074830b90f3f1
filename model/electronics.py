"""Recipe for the DIN paper's own dataset, Amazon Electronics (McAuley et al., UCSD 2014).

    python -m model.electronics --download --out data/electronics   # ~500 MB of downloads
    python -m model.train --data data/electronics --model din --out runs/electronics

Converts the public 5-core reviews and the product metadata into the raw-log layout this project
reads (``interactions.csv.gz`` + ``items.csv.gz``), exactly as the DIN reference code prepares
them: an item's category is the last entry of its last category path, and string ids become dense
integers in sorted order. ``model.train`` then builds samples with the paper's protocol.
The files' terms allow research use only: keep them out of this repository.
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

BASE_URL = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"
REVIEWS = "reviews_Electronics_5.json.gz"
META = "meta_Electronics.json.gz"


def _records(path: Path) -> Iterator[dict]:
    """One record per line: strict JSON (reviews) or a Python literal (the metadata file)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    yield ast.literal_eval(line)


def convert(reviews_path: Path, meta_path: Path, out: Path) -> dict[str, int]:
    category_of: dict[str, str] = {}
    for rec in _records(meta_path):
        paths = rec.get("categories") or []
        if paths and paths[-1]:
            category_of[rec["asin"]] = paths[-1][-1]
    users, items, times = [], [], []
    for rec in _records(reviews_path):
        if rec["asin"] in category_of:  # the reference keeps only reviewed items that have metadata
            users.append(rec["reviewerID"])
            items.append(rec["asin"])
            times.append(int(rec["unixReviewTime"]))
    if not users:
        raise ValueError(f"{reviews_path}: no review refers to an item of {meta_path}")
    user_keys, user_id = np.unique(np.array(users), return_inverse=True)
    item_keys, item_id = np.unique(np.array(items), return_inverse=True)
    cat_keys, cat_id = np.unique(np.array([category_of[a] for a in item_keys]), return_inverse=True)
    out.mkdir(parents=True, exist_ok=True)
    _write_csv(
        out / "interactions.csv.gz", {"user_id": user_id, "item_id": item_id, "timestamp": np.array(times)}
    )
    _write_csv(out / "items.csv.gz", {"item_id": np.arange(len(item_keys)), "category_id": cat_id})
    return {
        "users": len(user_keys),
        "items": len(item_keys),
        "categories": len(cat_keys),
        "reviews": len(users),
    }


def _write_csv(path: Path, columns: dict[str, np.ndarray]) -> None:
    table = pa.table({k: pa.array(v.astype(np.int64)) for k, v in columns.items()})
    with pa.CompressedOutputStream(str(path), "gzip") as stream:
        pacsv.write_csv(table, stream)


def download(dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in (REVIEWS, META):
        target = dest / name
        if target.exists():
            continue
        print(f"downloading {BASE_URL + name} -> {target}")
        tmp = target.with_suffix(".part")
        with urllib.request.urlopen(BASE_URL + name) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f)
        tmp.rename(target)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, help="folder for the converted raw log")
    p.add_argument("--raw", type=Path, help=f"folder holding {REVIEWS} and {META} (default: --out)")
    p.add_argument("--download", action="store_true", help="fetch the two UCSD files first")
    a = p.parse_args(argv)
    raw = a.raw or a.out
    if a.download:
        download(raw)
    for name in (REVIEWS, META):
        if not (raw / name).exists():
            p.error(f"{raw / name} not found: pass --download, or --raw with the folder holding it")
    stats = convert(raw / REVIEWS, raw / META, a.out)
    print(f"wrote {a.out}/interactions.csv.gz and items.csv.gz: {stats}")


if __name__ == "__main__":
    main()
