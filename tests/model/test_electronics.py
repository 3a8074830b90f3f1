import gzip
import json

import pyarrow.csv as pacsv
import pytest

from model.electronics import META, REVIEWS, main
from model.logs import build_samples


def write_fixture(raw):
    """A tiny copy of the UCSD formats: JSON reviews, Python-literal metadata."""
    reviews = [
        ("u2", "B01", 300),
        ("u2", "B02", 100),
        ("u2", "B03", 200),
        ("u1", "B02", 50),
        ("u1", "B04", 60),
        ("u1", "B09", 70),  # B09 has no metadata: dropped
        ("u3", "B01", 10),
    ]
    with gzip.open(raw / REVIEWS, "wt") as f:
        for user, asin, t in reviews:
            f.write(
                json.dumps({"reviewerID": user, "asin": asin, "overall": 5.0, "unixReviewTime": t}) + "\n"
            )
    meta = [
        {"asin": "B01", "categories": [["Electronics", "Audio", "Headphones"]]},
        {"asin": "B02", "categories": [["Electronics", "Cables"], ["Electronics", "Computers", "Mice"]]},
        {"asin": "B03", "categories": [["Electronics", "Audio", "Headphones"]], "title": "it's fine"},
        {"asin": "B04", "categories": [["Electronics", "Cameras"]]},
        {"asin": "B05", "categories": [["Electronics", "Cables"]]},
    ]
    with gzip.open(raw / META, "wt") as f:
        for m in meta:
            f.write(repr(m) + "\n")


def test_conversion_follows_the_reference_recipe(tmp_path):
    write_fixture(tmp_path)
    main(["--out", str(tmp_path / "out"), "--raw", str(tmp_path)])
    inter = pacsv.read_csv(tmp_path / "out" / "interactions.csv.gz").to_pylist()
    items = pacsv.read_csv(tmp_path / "out" / "items.csv.gz").to_pylist()
    # ids are dense in sorted order: users u1..u3 -> 0..2, items B01..B04 -> 0..3 (B05 never reviewed)
    assert {(r["user_id"], r["item_id"], r["timestamp"]) for r in inter} == {
        (1, 0, 300),
        (1, 1, 100),
        (1, 2, 200),
        (0, 1, 50),
        (0, 3, 60),
        (2, 0, 10),
    }
    # category = last entry of the last path: Headphones, Mice, Headphones, Cameras -> sorted 0..2
    assert [(r["item_id"], r["category_id"]) for r in items] == [(0, 1), (1, 2), (2, 1), (3, 0)]

    train, test = build_samples(tmp_path / "out")
    # user 1 (u2) in time order: B02, B03, B01 -> train predicts B03 from [B02], test B01 from [B02, B03]
    pos_test = [r for r in test.to_pylist() if r["label"] == 1 and r["user_id"] == 1]
    assert pos_test == [
        {
            "user_id": 1,
            "item_id": 0,
            "category_id": 1,
            "label": 1,
            "hist_item_id": [1, 2],
            "hist_category_id": [2, 1],
        }
    ]
    assert train.num_rows == 2 * 1 and test.num_rows == 2 * 2  # u3 has one review: no sample


def test_missing_files_give_a_cli_error_naming_the_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path)])
    assert exc.value.code == 2
    assert REVIEWS in capsys.readouterr().err
