import numpy as np

from model.synthetic import SyntheticSpec, generate, generate_log

SMALL = SyntheticSpec(n_users=300, n_items=200, n_categories=10, seed=5)


def test_generator_is_deterministic_for_a_seed():
    a_train, a_test = generate(SMALL)
    b_train, b_test = generate(SMALL)
    assert a_train.equals(b_train) and a_test.equals(b_test)
    assert not generate(SyntheticSpec(n_users=300, n_items=200, n_categories=10, seed=6))[0].equals(a_train)


def test_samples_carry_all_four_feature_groups_and_consistent_histories():
    train, test = generate(SMALL)
    assert {"age", "gender", "hour", "weekday", "hist_item_id", "hist_category_id"} <= set(train.column_names)
    assert train.num_rows == 300 * 7 and test.num_rows == 300 * 3
    log = generate_log(SMALL)
    for row in test.slice(0, 20).to_pylist():
        assert row["category_id"] == log.item_category[row["item_id"]]
        assert [log.item_category[i] for i in row["hist_item_id"]] == row["hist_category_id"]
        assert 1 <= len(row["hist_item_id"]) <= SMALL.max_history


def test_clicks_depend_on_the_candidate_matching_the_users_behaviours():
    train, _ = generate(SyntheticSpec(n_users=2000, seed=1))
    rows = train.to_pydict()
    matches = np.array(
        [c in h[-20:] for c, h in zip(rows["category_id"], rows["hist_category_id"], strict=True)]
    )
    label = np.array(rows["label"])
    assert label[matches].mean() > label[~matches].mean() + 0.3
