import numpy as np
import pyarrow as pa
import pytest

from contracts.cli import DataError
from contracts.schema import OOV, FeatureSchema, FeatureSpace
from model.data import encode, infer_schema, load_tables, split_by_user, vocab_columns


def sample_table() -> pa.Table:
    return pa.table(
        {
            "user_id": [1, 1, 2],
            "item_id": [10, 11, 12],
            "category_id": ["a", "b", "zzz"],
            "label": [1, 0, 1],
            "hist_item_id": [[1, 2, 3, 4], [], [10]],
            "hist_category_id": [["a", "b", "a", "b"], [], ["a"]],
            "age": [30, 30, 40],
            "hour": [5, 6, 7],
            "timestamp": [100, 200, 300],
        }
    )


def test_schema_is_inferred_from_the_shared_layout():
    s = infer_schema(sample_table())
    assert s == FeatureSchema(profile=("age",), behavior=("item_id", "category_id"), context=("hour",))


def test_encode_keeps_the_most_recent_behaviours_left_aligned_and_pads_the_rest():
    table = sample_table()
    schema = infer_schema(table)
    space = FeatureSpace.build(
        schema, vocab_columns(table.slice(0, 2), schema)
    )  # user 2 unseen in "training"
    s = encode(table, space, max_history=3)
    item = space.vocabs["item_id"]
    assert s.history_len.tolist() == [3, 0, 1]
    assert s.history[0, :, 0].tolist() == item.encode(np.array([2, 3, 4])).tolist()  # oldest dropped
    assert s.history[1].tolist() == [[0, 0]] * 3
    assert s.history[2, 0].tolist() == [
        item.encode(np.array([10]))[0],
        space.vocabs["category_id"].encode(np.array(["a"]))[0],
    ]
    assert s.candidate[2].tolist() == [OOV, OOV]  # item 12 and category "zzz" never seen in training
    assert s.profile[2, 0] == OOV and s.context.shape == (3, 1)
    assert s.label.tolist() == [1.0, 0.0, 1.0] and s.user.tolist() == [1, 1, 2]


def test_batches_trim_padding_no_row_uses():
    table = sample_table()
    schema = infer_schema(table)
    s = encode(table, FeatureSpace.build(schema, vocab_columns(table, schema)), max_history=50)
    batch, label = s.batch(np.array([1, 2]))
    assert batch.history.shape == (2, 1, 2) and label.tolist() == [0.0, 1.0]
    seen = np.concatenate([b.candidate.numpy() for b, _ in s.batches(2, np.random.default_rng(0))])
    assert sorted(seen[:, 0].tolist()) == sorted(s.candidate[:, 0].tolist())


def test_validation_split_is_by_user_and_seeded():
    users = np.repeat(np.arange(100), 3)
    a = split_by_user(users, 0.2, seed=1)
    assert a.sum() == 60  # 20 users x 3 rows: a user is entirely in or out
    assert all(len(set(a[users == u])) == 1 for u in range(100))
    assert (split_by_user(users, 0.2, seed=1) == a).all()


def test_load_tables_names_what_it_expected(tmp_path):
    with pytest.raises(DataError, match=r"train\.parquet"):
        load_tables(str(tmp_path), 10, 0)
    assert load_tables("synthetic", 10, 0).source.startswith("synthetic")


@pytest.mark.parametrize("name", ["amazon-sports", "movielens-100k"])
def test_real_datasets_encode_with_their_feature_groups(shared_data, name):
    tables = load_tables(str(shared_data / name), 100, 0)
    schema = infer_schema(tables.train)
    if name == "movielens-100k":
        assert schema.profile == ("age", "gender", "occupation") and schema.context == ("hour", "weekday")
    else:
        assert schema.profile == () and schema.context == ()
    space = FeatureSpace.build(schema, vocab_columns(tables.train, schema))
    s = encode(tables.test.slice(0, 1000), space, 100)
    assert (s.history_len > 0).all() and s.history.max() < max(space.sizes().values())
