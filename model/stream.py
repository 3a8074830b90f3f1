"""Training data that does not fit in memory: a sample table in Parquet (a file, or a folder of
files, in the layout of ``model.data``) read in record batches and never held whole.

The table is cut into units: each row group's consecutive chunks of ``CHUNK_ROWS`` rows. Unit k
belongs to shard ``k % shards``; a DataLoader worker of rank r is shard ``r * workers + worker``,
so every row is read by exactly one worker of one rank per epoch. A row group holding none of a
shard's units is not read at all by it; a file written as one big row group is read (not decoded)
by every shard, so large tables should be written with row groups of ``CHUNK_ROWS`` rows or so.

Rows are shuffled within a bounded buffer (``buffer_rows``): when it is full it is permuted, half of
it leaves as batches and the other half stays to mix with what comes next. Each epoch visits the
row groups in another order. Vocabularies are built in one streaming pass first
(``vocab_space``), the same on every rank since it reads the same table.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from torch.utils.data import IterableDataset, get_worker_info

from contracts.schema import FeatureSchema, FeatureSpace, Vocab
from model.data import Samples, encode, infer_schema, vocab_columns
from model.din import DIN, Batch
from model.sources import files

CHUNK_ROWS = 16_384


@dataclass(frozen=True)
class Unit:
    path: str
    row_group: int
    chunk: int  # the chunk-th CHUNK_ROWS rows of the row group


def units(source: str | Path) -> list[Unit]:
    """Every unit of the table, from the files' metadata alone."""
    out = []
    for path in files(source):
        meta = pq.ParquetFile(path).metadata
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            out += [Unit(path, g, c) for c in range(-(-n // CHUNK_ROWS))]
    return out


def read_units(mine: list[Unit], order: np.random.Generator | None = None) -> Iterator[pa.Table]:
    """The tables of these units; with ``order``, their row groups in a random order."""
    by_group: dict[tuple[str, int], list[int]] = {}
    for u in mine:
        by_group.setdefault((u.path, u.row_group), []).append(u.chunk)
    groups = list(by_group)
    if order is not None:
        groups = [groups[i] for i in order.permutation(len(groups))]
    for path, g in groups:
        wanted = set(by_group[path, g])
        f = pq.ParquetFile(path)
        for c, batch in enumerate(f.iter_batches(batch_size=CHUNK_ROWS, row_groups=[g])):
            if c in wanted:
                yield pa.Table.from_batches([batch])
        f.close()


def scan(source: str | Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """The whole table in chunks, in file order (the vocabulary pass, evaluation)."""
    for path in files(source):
        f = pq.ParquetFile(path)
        for batch in f.iter_batches(batch_size=CHUNK_ROWS, columns=columns):
            yield pa.Table.from_batches([batch])
        f.close()


def schema_of(source: str | Path) -> FeatureSchema:
    return infer_schema(pq.ParquetFile(files(source)[0]).schema_arrow.empty_table())


class _Counts:
    """Running (sorted unique key, count) of one feature."""

    def __init__(self) -> None:
        self.keys: np.ndarray | None = None
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, values: np.ndarray) -> None:
        keys, counts = np.unique(Vocab.normalised(values), return_counts=True)
        if self.keys is not None and len(self.keys):
            keys, inverse = np.unique(np.concatenate([self.keys, keys]), return_inverse=True)
            counts = np.bincount(inverse, np.concatenate([self.counts, counts])).astype(np.int64)
        self.keys, self.counts = keys, counts


def vocab_space(
    source: str | Path, schema: FeatureSchema, exclude_users: np.ndarray | None = None, min_count: int = 1
) -> FeatureSpace:
    """The vocabularies ``FeatureSpace.build`` makes from the whole table, in one pass over it,
    leaving out the rows of ``exclude_users`` (the validation users)."""
    counts = {n: _Counts() for n in schema.all_features}
    for table in scan(source):
        for n, values in vocab_columns(of_users(table, exclude_users, keep=False), schema).items():
            counts[n].add(values)
    vocabs = {}
    for n, c in counts.items():
        keys = c.keys if c.keys is not None else np.zeros(0, dtype=np.int64)
        kept = c.counts >= min_count if len(c.counts) else np.zeros(0, dtype=bool)
        vocabs[n] = Vocab(keys=keys[kept], counts=np.concatenate([[0, 0], c.counts[kept]]).astype(np.int64))
    return FeatureSpace(schema, vocabs)


def of_users(table: pa.Table, users: np.ndarray | None, keep: bool) -> pa.Table:
    """The rows of ``users`` (``keep``) or of everyone else; all rows when ``users`` is None."""
    if users is None:
        return table
    mask = pc.is_in(table["user_id"], pa.array(users))
    return table.filter(mask if keep else pc.invert(mask))


def users_of(source: str | Path) -> np.ndarray:
    """The table's distinct users (for the validation split by user)."""
    seen = _Counts()
    for table in scan(source, columns=["user_id"]):
        seen.add(table["user_id"].to_numpy(zero_copy_only=False))
    return seen.keys if seen.keys is not None else np.zeros(0, dtype=np.int64)


class ShuffledBatches(IterableDataset):
    """One shard's encoded, shuffled batches of a Parquet sample table (see the module's text).
    Used as ``DataLoader(ShuffledBatches(...), batch_size=None, num_workers=W)``."""

    def __init__(
        self,
        source: str | Path,
        space: FeatureSpace,
        max_history: int,
        batch_size: int,
        rank: int = 0,
        world: int = 1,
        buffer_rows: int = 100_000,
        seed: int = 0,
        drop_users: np.ndarray | None = None,
    ):
        self.source, self.space, self.max_history, self.batch_size = source, space, max_history, batch_size
        self.rank, self.world, self.buffer_rows, self.seed = (
            rank,
            world,
            max(buffer_rows, 2 * batch_size),
            seed,
        )
        self.drop_users = drop_users
        self.units = units(source)
        self.epoch = 0
        self.peak_buffered = 0  # the most rows this iterator held at once (in this process)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def shard(self) -> tuple[int, int]:
        """(this worker's shard, the number of shards)."""
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        return self.rank * workers + worker, self.world * workers

    def tables(self) -> Iterator[pa.Table]:
        shard, shards = self.shard()
        rng = np.random.default_rng([self.seed, self.epoch, shard])
        for table in read_units(self.units[shard::shards], rng):
            table = of_users(table, self.drop_users, keep=False)
            if table.num_rows:
                yield table

    def __iter__(self) -> Iterator[tuple[Batch, torch.Tensor]]:
        for s in self.shuffled():
            yield s.batch(np.arange(len(s)))

    def shuffled(self) -> Iterator[Samples]:
        """This shard's rows, encoded, in shuffled batches of ``batch_size`` (the last may be short)."""
        shard, _ = self.shard()
        rng = np.random.default_rng([self.seed, self.epoch, shard, 1])
        buffer: Samples | None = None
        for table in self.tables():
            s = encode(table, self.space, self.max_history)
            buffer = s if buffer is None else concat(buffer, s)
            self.peak_buffered = max(self.peak_buffered, len(buffer))
            if len(buffer) >= self.buffer_rows:
                buffer = buffer.take(rng.permutation(len(buffer)))
                out = (len(buffer) - self.buffer_rows // 2) // self.batch_size * self.batch_size
                for start in range(0, out, self.batch_size):
                    yield buffer.take(np.arange(start, start + self.batch_size))
                buffer = buffer.take(np.arange(out, len(buffer)))
        if buffer is not None and len(buffer):
            buffer = buffer.take(rng.permutation(len(buffer)))
            for start in range(0, len(buffer), self.batch_size):
                yield buffer.take(np.arange(start, min(start + self.batch_size, len(buffer))))


def concat(a: Samples, b: Samples) -> Samples:
    return Samples(
        *(np.concatenate([x, y]) for x, y in zip(a.__dict__.values(), b.__dict__.values(), strict=True))
    )


def predict_stream(
    model: DIN,
    tables: Iterator[pa.Table],
    space: FeatureSpace,
    max_history: int,
    batch_size: int = 8192,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, labels, predicted CTRs) of every row of ``tables``, one chunk in memory at a time."""
    users, labels, preds = [], [], []
    model.eval()
    with torch.inference_mode():
        for table in tables:
            s = encode(table, space, max_history)
            for batch, label in s.batches(batch_size):
                preds.append(torch.sigmoid(model.calibrated(model(batch))).numpy())
                labels.append(label.numpy())
            users.append(s.user)
    if not preds:
        return np.zeros(0), np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.float32)
    return np.concatenate(users), np.concatenate(labels), np.concatenate(preds)
