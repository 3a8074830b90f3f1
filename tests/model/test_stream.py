"""The streaming Parquet reader: shards by rank and DataLoader worker, bounded shuffling, and the
streaming vocabulary pass."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from torch.utils.data import DataLoader

from contracts.schema import FeatureSpace
from model import stream, synthetic
from model.data import split_by_user, vocab_columns
from model.stream import ShuffledBatches, schema_of, users_of, vocab_space


@pytest.fixture(scope="module")
def table() -> pa.Table:
    train, _ = synthetic.generate(synthetic.SyntheticSpec(n_users=600, max_history=10, seed=3))
    return train


def write(table: pa.Table, path: Path, row_group: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, row_group_size=row_group)
    return path


def test_every_row_is_read_once_per_epoch_across_ranks_and_workers(table, tmp_path, monkeypatch):
    rows = table.append_column("row", pa.array(np.arange(table.num_rows)))
    # Use the row number as the user id, so the batches' users name the rows they carry.
    rows = rows.set_column(rows.schema.get_field_index("user_id"), "user_id", rows["row"]).drop(["row"])
    source = tmp_path / "train"
    write(rows.slice(0, 2500), source / "a.parquet", 700)  # several files, row groups and chunks
    write(rows.slice(2500), source / "b.parquet", 5000)
    monkeypatch.setattr(stream, "CHUNK_ROWS", 300)
    space = vocab_space(source, schema_of(source))
    for epoch in (1, 2):
        seen: Counter[int] = Counter()
        orders = []
        for rank in (0, 1):
            data = UsersOf(source, space, 10, 64, rank=rank, world=2, buffer_rows=500, seed=0)
            data.set_epoch(epoch)
            got = [int(u) for users in DataLoader(data, batch_size=None, num_workers=2) for u in users]
            orders.append(got)
            seen.update(got)
        assert seen == Counter(range(table.num_rows))  # every row exactly once, across 2 x 2 shards
        assert all(o != sorted(o) for o in orders)  # shuffled, not in file order


class UsersOf(ShuffledBatches):
    """The reader's shuffled, encoded batches, as the raw user ids of their rows."""

    def __iter__(self):
        for s in self.shuffled():
            yield s.user


def test_the_shuffle_buffer_holds_a_bounded_number_of_rows(table, tmp_path, monkeypatch):
    source = write(table, tmp_path / "train.parquet", 400)
    monkeypatch.setattr(stream, "CHUNK_ROWS", 400)
    space = vocab_space(source, schema_of(source))
    data = ShuffledBatches(source, space, 10, 32, buffer_rows=1000)
    n = sum(len(label) for _, label in data)
    assert n == table.num_rows
    assert 1000 <= data.peak_buffered < 1000 + 400  # full, plus at most one chunk


def test_the_streaming_vocabulary_equals_the_in_memory_one_without_the_validation_users(table, tmp_path):
    source = write(table, tmp_path / "train.parquet", 900)
    schema = schema_of(source)
    users = users_of(source)
    np.testing.assert_array_equal(users, np.unique(table["user_id"].to_numpy()))
    valid = users[split_by_user(users, 0.1, 0)]
    fit = table.filter(pc.invert(pc.is_in(table["user_id"], pa.array(valid))))
    expected = FeatureSpace.build(schema, vocab_columns(fit, schema))
    got = vocab_space(source, schema, exclude_users=valid)
    assert got.sizes() == expected.sizes()
    for name, vocab in expected.vocabs.items():
        np.testing.assert_array_equal(got.vocabs[name].keys, vocab.keys)
        np.testing.assert_array_equal(got.vocabs[name].counts, vocab.counts)
