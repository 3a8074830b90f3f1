import json
import shutil

import numpy as np
import pytest

from contracts.bundle import MANIFEST_FILE, MODEL_FILE, SPACE_FILE, BundleError, load_bundle, sha256
from contracts.feeds import one_request
from model.config import DINConfig, TrainConfig
from model.export import main
from model.train import run


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    run(
        DINConfig(),
        TrainConfig(data="synthetic", out=str(root / "run"), epochs=1, progress=False, max_history=30),
    )
    main(["--run", str(root / "run"), "--bundle", str(root / "bundle"), "--version", "v-test"])
    return root / "bundle"


def copy(bundle, tmp_path):
    return shutil.copytree(bundle, tmp_path / "copy")


def test_bundle_holds_one_onnx_file_space_and_a_complete_manifest(bundle):
    assert sorted(p.name for p in bundle.iterdir()) == [MANIFEST_FILE, MODEL_FILE, SPACE_FILE]
    m = json.loads((bundle / MANIFEST_FILE).read_text())
    assert m["version"] == "v-test" and m["max_history"] == 30 and m["opset"] == 18
    assert m["training"]["data"].startswith("synthetic")
    assert {"auc", "gauc", "logloss", "calibration", "ece"} <= set(m["training"]["test"])
    assert max(m["parity_max_abs_error"].values()) <= 1e-5
    assert m["signature"]["inputs"]["history"] == ["int64", ["R", "L", 2]]
    assert m["sha256"][MODEL_FILE] == sha256(bundle / MODEL_FILE)
    for key in ("created_at", "model", "checkpoint"):
        assert m[key]


def test_a_loaded_bundle_scores_one_user_against_many_candidates(bundle):
    b = load_bundle(bundle)
    assert b.version == "v-test" and b.max_history == 30
    s = b.space.schema
    item = b.space.vocabs["item_id"].encode(np.array([3, 4, 5, 999_999]))
    cat = b.space.vocabs["category_id"].encode(np.array([1, 1, 2, 2]))
    feeds = one_request(
        np.ones(len(s.profile), dtype=np.int64),
        np.ones(len(s.context), dtype=np.int64),
        np.stack([item[:2], cat[:2]], 1),
        np.stack([item, cat], 1),
    )
    ctr, attention = b.run(feeds, with_attention=True)
    assert ctr.shape == (4,) and attention.shape == (4, 2) and np.all((ctr > 0) & (ctr < 1))


def test_a_corrupt_model_file_is_refused(bundle, tmp_path):
    bad = copy(bundle, tmp_path)
    data = bytearray((bad / MODEL_FILE).read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\x00" * 64
    (bad / MODEL_FILE).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256"):
        load_bundle(bad)
    manifest = json.loads((bad / MANIFEST_FILE).read_text())
    manifest["sha256"][MODEL_FILE] = sha256(bad / MODEL_FILE)  # even with a matching digest
    (bad / MODEL_FILE).write_bytes(b"not a model")
    manifest["sha256"][MODEL_FILE] = sha256(bad / MODEL_FILE)
    (bad / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"onnx\.checker"):
        load_bundle(bad)


def test_a_model_whose_signature_disagrees_with_the_schema_is_refused(bundle, tmp_path):
    bad = copy(bundle, tmp_path)
    space = json.loads((bad / SPACE_FILE).read_text())
    space["schema"]["context"].append("device")  # the graph takes 2 context ids, the schema now says 3
    space["vocabs"]["device"] = {"dtype": "str", "keys": ["ios"], "counts": [0, 0, 1]}
    (bad / SPACE_FILE).write_text(json.dumps(space))
    manifest = json.loads((bad / MANIFEST_FILE).read_text())
    manifest["sha256"][SPACE_FILE] = sha256(bad / SPACE_FILE)
    (bad / MANIFEST_FILE).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="context"):
        load_bundle(bad)


def test_a_missing_file_is_named(bundle, tmp_path):
    bad = copy(bundle, tmp_path)
    (bad / SPACE_FILE).unlink()
    with pytest.raises(BundleError, match=SPACE_FILE):
        load_bundle(bad)


def test_export_refuses_to_overwrite_and_names_a_missing_run(bundle, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--run", str(tmp_path / "nothing"), "--bundle", str(tmp_path / "b")])
    assert exc.value.code == 2 and "no ckpt.pt" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["--run", str(bundle.parent / "run"), "--bundle", str(bundle)])
    assert exc.value.code == 2 and "already exists" in capsys.readouterr().err


@pytest.fixture(scope="module")
def traced(trained, tmp_path_factory):
    """The session model's serving graph exported through an empty cache: (cache, its ONNX file,
    whether it came from the cache)."""
    from model.din import Checkpoint
    from model.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("traced")
    hit = export_onnx(Checkpoint.load(str(trained[0])).build(), root / "first.onnx", cache=root / "cache")
    return root / "cache", root / "first.onnx", hit


def test_a_second_export_of_an_architecture_reuses_the_traced_graph_with_its_own_weights(
    traced, trained_other, tmp_path
):
    import onnxruntime as ort

    from contracts.bundle import session_options
    from model.din import Checkpoint
    from model.onnx_export import as_feeds, export_onnx, measure_parity, random_inputs

    cache, first_file, first_hit = traced
    assert first_hit is False and len(list(cache.iterdir())) == 1  # traced, and kept
    cache = shutil.copytree(cache, tmp_path / "cache")
    other = Checkpoint.load(str(trained_other.parent / "run" / "ckpt.pt")).build()
    assert export_onnx(other, tmp_path / "other.onnx", cache=cache) is True  # the graph, other weights
    sessions = [
        ort.InferenceSession(str(f), session_options()) for f in (first_file, tmp_path / "other.onnx")
    ]
    assert max(measure_parity(other, sessions[1], 20).values()) <= 1e-5
    x = as_feeds(random_inputs(other.space, [20], [50], 20, seed=7))._asdict()
    ctr_first, ctr_other = (s.run(["ctr"], x)[0] for s in sessions)
    assert np.abs(ctr_first - ctr_other).max() > 1e-3  # the weights were swapped in, not kept


def test_a_damaged_or_mismatched_cache_entry_is_not_used(traced, trained, tmp_path):
    from model.din import Checkpoint
    from model.onnx_export import graph_key, load_traced
    from model.serving import ServingGraph

    model = Checkpoint.load(str(trained[0])).build()
    (entry,) = shutil.copytree(traced[0], tmp_path / "cache").iterdir()
    assert entry.name == f"{graph_key(model, 18)}.onnx"
    weights = {k: t.numpy() for k, t in ServingGraph(model).eval().state_dict().items()}
    assert load_traced(entry, weights) is not None
    assert load_traced(entry, {k: v for k, v in weights.items() if k != "mlp.0.weight"}) is None
    assert load_traced(entry, weights | {"mlp.0.weight": weights["mlp.0.weight"][0]}) is None  # rank
    entry.write_bytes(b"not onnx")
    assert load_traced(entry, weights) is None


def test_a_cached_graph_that_fits_the_weights_but_scores_wrong_is_traced_again(traced, trained, tmp_path):
    import onnx

    from model.onnx_export import export_bundle

    cache = shutil.copytree(traced[0], tmp_path / "cache")
    (entry,) = cache.iterdir()
    wrong = onnx.load(entry)
    (last,) = [n for n in wrong.graph.node if "ctr" in n.output]
    last.op_type = {"Sigmoid": "Relu"}.get(last.op_type, "Sigmoid")  # the CTR made wrong
    onnx.save(wrong, entry)

    manifest = export_bundle(trained[0], tmp_path / "bundle", version="retraced", cache=cache)

    assert max(manifest["parity_max_abs_error"].values()) <= 1e-5
    assert onnx.load(entry).graph.node != wrong.graph.node  # the wrong entry was replaced
