import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.logs import build_samples


def write_log(folder, rows, items, users=None, rating=False):
    with gzip.open(folder / "interactions.csv.gz", "wt") as f:
        f.write("user_id,item_id,timestamp" + (",rating" if rating else "") + "\n")
        f.writelines(",".join(map(str, r)) + "\n" for r in rows)
    with gzip.open(folder / "items.csv.gz", "wt") as f:
        f.write("item_id,category_id\n")
        f.writelines(f"{i},{c}\n" for i, c in items)
    if users:
        with gzip.open(folder / "users.csv.gz", "wt") as f:
            f.write("user_id,age,gender,zip_code\n")
            f.writelines(",".join(map(str, u)) + "\n" for u in users)


def test_implicit_log_follows_the_din_protocol(tmp_path):
    # user 7 in time order: 3, 1, 2 (file order differs); items 1..6 in the catalog
    write_log(
        tmp_path,
        [(7, 2, 30), (7, 3, 10), (7, 1, 20), (8, 4, 5), (8, 5, 6)],
        [(i, i % 2) for i in range(1, 7)],
    )
    train, test = build_samples(tmp_path, seed=3)
    tr = train.to_pylist()
    assert [r["label"] for r in tr] == [1, 0]
    assert tr[0] == {
        "user_id": 7,
        "item_id": 1,
        "category_id": 1,
        "label": 1,
        "hist_item_id": [3],
        "hist_category_id": [1],
    }
    assert tr[1]["hist_item_id"] == [3] and tr[1]["item_id"] not in (
        1,
        2,
        3,
    )  # never an item the user touched
    te = test.to_pylist()
    assert [(r["user_id"], r["label"], r["hist_item_id"]) for r in te] == [
        (7, 1, [3, 1]),
        (7, 0, [3, 1]),
        (8, 1, [4]),
        (8, 0, [4]),
    ]
    assert te[1]["item_id"] not in (1, 2, 3) and te[3]["item_id"] not in (4, 5)
    assert te[1]["category_id"] == te[1]["item_id"] % 2


def test_history_is_cut_to_max_history(tmp_path):
    write_log(tmp_path, [(1, i, i) for i in range(1, 8)], [(i, 0) for i in range(1, 20)])
    _, test = build_samples(tmp_path, max_history=3)
    assert test.to_pylist()[0]["hist_item_id"] == [4, 5, 6]


def test_explicit_log_gives_ratings_as_clicks_context_and_profile(tmp_path):
    ts = 874965478  # 1997-09-22 21:57:58 UTC, a Monday
    rows = [(u, i, ts + 60 * i, 5 if i % 2 else 2) for u in range(1, 11) for i in range(1, 5)]
    users = [(u, 20 + u, "F" if u % 2 else "M", "12345") for u in range(1, 11)]
    write_log(tmp_path, rows, [(i, "Drama") for i in range(1, 5)], users, rating=True)
    train, test = build_samples(tmp_path, test_user_fraction=0.2, seed=0)
    assert train.num_rows == 8 * 3 and test.num_rows == 2 * 3
    assert set(train["user_id"].to_pylist()).isdisjoint(test["user_id"].to_pylist())
    r = train.to_pylist()[0]
    assert r["item_id"] == 2 and r["label"] == 0 and r["hist_item_id"] == [1]
    assert (r["hour"], r["weekday"]) == (21, 0)
    assert r["age"] == 20 + r["user_id"] and "zip_code" not in train.column_names


def test_a_log_without_integer_ids_is_refused_naming_the_column(tmp_path):
    write_log(tmp_path, [("abc", 1, 1)], [(1, 0)])
    with pytest.raises(ValueError, match="user_id"):
        build_samples(tmp_path)


@pytest.mark.parametrize("name", ["amazon-sports", "amazon-hin"])
def test_raw_log_reproduces_the_shared_positive_samples(shared_data, name):
    train, test = build_samples(shared_data / name)
    for mine, split in ((train, "train"), (test, "test")):
        ref = pq.read_table(shared_data / name / f"{split}.parquet")
        pos, ref_pos = (t.filter(pa.array(t["label"].to_numpy() == 1)) for t in (mine, ref))
        assert pos.num_rows == ref_pos.num_rows
        for col in ("user_id", "item_id", "category_id", "hist_item_id", "hist_category_id"):
            assert pos[col].equals(ref_pos[col]), col
        assert np.array_equal(mine["label"].to_numpy(), ref["label"].to_numpy())
