import json
import shutil

import numpy as np
import pytest

from model.bundle import MANIFEST_FILE, MODEL_FILE, SPACE_FILE, BundleError, load_bundle, sha256
from model.din import DINConfig
from model.export import main
from model.feeds import one_request
from model.train import TrainConfig, run


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
    assert m["training"]["data"].startswith("synthetic") and set(m["training"]["test"]) == {
        "auc",
        "gauc",
        "logloss",
    }
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
