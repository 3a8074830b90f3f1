import numpy as np
import pytest

from contracts.schema import OOV, PAD, FeatureSchema, FeatureSpace, Vocab


def test_unknown_ids_map_to_the_oov_index_and_known_ids_after_the_reserved_ones():
    v = Vocab.build(np.array([30, 10, 10, 20]))
    assert v.encode(np.array([10, 20, 30, 99, -5])).tolist() == [2, 3, 4, OOV, OOV]
    assert v.counts.tolist() == [0, 0, 2, 1, 1]  # PAD and OOV never count
    assert PAD == 0


def test_string_vocab_encodes_and_keeps_shape():
    v = Vocab.build(np.array(["M", "F", "M"], dtype=object))
    assert v.encode(np.array([["M", "X"], ["F", "F"]])).tolist() == [[3, OOV], [2, 2]]


def test_mistyped_ids_map_to_oov_instead_of_failing():
    ints = Vocab.build(np.array([1, 2]))
    assert ints.encode(np.array(["2", "abc"])).tolist() == [3, OOV]
    strs = Vocab.build(np.array(["1"]))
    assert strs.encode(np.array([1, 7])).tolist() == [2, OOV]


def test_empty_input_and_empty_vocab():
    v = Vocab.build(np.array([], dtype=np.int64))
    assert v.encode(np.array([5])).tolist() == [OOV]
    assert Vocab.build(np.array([1])).encode(np.array([], dtype=np.int64)).shape == (0,)


def test_feature_space_round_trips_through_a_plain_dict():
    schema = FeatureSchema(profile=("gender",), behavior=("item_id", "category_id"), context=("hour",))
    cols = {
        "gender": np.array(["F", "M"]),
        "item_id": np.array([5, 6, 5]),
        "category_id": np.array([1, 1, 2]),
        "hour": np.array([0, 23]),
    }
    space = FeatureSpace.build(schema, cols)
    again = FeatureSpace.from_dict(space.to_dict())
    assert again.schema == schema
    for name, vocab in space.vocabs.items():
        assert again.vocabs[name].keys.tolist() == vocab.keys.tolist()
        assert again.vocabs[name].counts.tolist() == vocab.counts.tolist()


def test_schema_rejects_duplicate_names_and_a_missing_candidate_field():
    with pytest.raises(ValueError, match="unique"):
        FeatureSchema(profile=("item_id",), behavior=("item_id",))
    with pytest.raises(ValueError, match="behavior"):
        FeatureSchema(behavior=())


def test_an_extended_space_keeps_every_known_id_and_adds_the_new_ones():
    schema = FeatureSchema(profile=("gender",), behavior=("item_id",))
    old = FeatureSpace.build(schema, {"gender": np.array(["F", "M"]), "item_id": np.array([10, 30, 30])})
    new = old.extended({"gender": np.array(["F", "X"]), "item_id": np.array([20, 30, 40, 40])})
    assert new.vocabs["item_id"].keys.tolist() == [10, 20, 30, 40]
    assert new.vocabs["gender"].keys.tolist() == ["F", "M", "X"]
    # Counts are the new data's (MBA regularises by them); an id only the old data had counts 0.
    v = new.vocabs["item_id"]
    assert dict(zip(v.keys.tolist(), v.counts[2:].tolist(), strict=True)) == {10: 0, 20: 1, 30: 1, 40: 2}
    with pytest.raises(ValueError, match="another type"):
        old.extended({"gender": np.array([1]), "item_id": np.array([1])})
