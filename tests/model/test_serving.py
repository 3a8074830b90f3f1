"""The serving graph in onnxruntime must score exactly like the torch training graph."""

import numpy as np
import onnxruntime as ort
import pytest
import torch

from contracts.feeds import OUTPUTS
from contracts.schema import FeatureSpace
from model.config import DINConfig
from model.din import build_model
from model.onnx_export import as_feeds, export_onnx, parity_cases, random_inputs, reference
from model.serving import ServingGraph, fold_norm_into_linear
from tests.model.conftest import make_space, random_batch

MAX_HISTORY = 100
VARIANTS = {
    "din-default": DINConfig(),  # Dice in the final MLP, PReLU in the activation unit, input BatchNorm
    "din-dice": DINConfig(attention_activation="dice", input_norm=False),
    "din-prelu-softmax": DINConfig(activation="prelu", attention_softmax=True),
    "base-mean": DINConfig(model="base", base_pooling="mean"),
}
# PReLU slopes drawn from this range: the default's stay at most 1 (the single-Max form of
# FrozenPReLU); the softmax variant's go above 1, where the exported form switches to min(x, a·x).
SLOPES = {"din-prelu-softmax": (-0.5, 2.0)}


def trained_like(cfg: DINConfig, space: FeatureSpace, slopes: tuple[float, float] = (-0.5, 1.0)):
    """Embeddings as spread as trained ones, PReLU slopes in ``slopes``, and Dice and BatchNorm
    statistics moved off their initial values."""
    torch.manual_seed(0)
    model = build_model(cfg, space)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.PReLU):
                m.weight.uniform_(*slopes)
        for name in model.embeddings:
            model.table(name).weight[1:].normal_(0, 0.5)
        model.attention[-1].weight.mul_(10)  # type: ignore[operator]
    model.train()
    for seed in range(3):  # histories of every length the parity cases use
        model(random_batch(space, 64, MAX_HISTORY, seed=seed))
    model.eval()
    with torch.no_grad():  # logits centred on 0 with a std of 2, like a trained model's
        last = model.mlp[-1]
        assert isinstance(last, torch.nn.Linear)
        last.bias.zero_()
        logits = model(random_batch(space, 256, MAX_HISTORY, seed=7))
        last.weight.mul_(2 / logits.std())
        last.bias.fill_(float(-logits.mean() * 2 / logits.std()))
    return model


@pytest.fixture(scope="module", params=list(VARIANTS))
def exported(request, tmp_path_factory):
    space = make_space()
    model = trained_like(VARIANTS[request.param], space, SLOPES.get(request.param, (-0.5, 1.0)))
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    export_onnx(model, path)
    return model, ort.InferenceSession(str(path))


def run(session: ort.InferenceSession, x) -> list[np.ndarray]:
    return session.run(list(OUTPUTS), as_feeds(x)._asdict())


@pytest.mark.parametrize("case", list(parity_cases(make_space(), MAX_HISTORY)))
def test_onnx_scores_and_attention_equal_torch_within_1e_5(exported, case):
    model, session = exported
    x = parity_cases(model.space, MAX_HISTORY)[case]
    ctr, attention = run(session, x)
    ref_ctr, ref_attention = reference(model, x)
    assert np.isfinite(ctr).all() and np.isfinite(attention).all()
    assert ctr.shape == (len(x.candidate),) and attention.shape == (len(x.candidate), x.history.shape[1])
    np.testing.assert_allclose(ctr, ref_ctr, atol=1e-5, rtol=0)
    np.testing.assert_allclose(attention, ref_attention, atol=1e-5, rtol=0)
    assert (ctr > 0).all() and (ctr < 1).all()
    if len(ctr) >= 200:
        assert ctr.std() > 0.05  # scores spread like a trained model's, so the comparison means something


@pytest.mark.parametrize(("lengths", "n_per_request"), [([3, 0], [4, 2]), ([3], [6])], ids=["R=2", "R=1"])
def test_padding_slots_get_zero_attention_and_do_not_change_scores(exported, lengths, n_per_request):
    model, session = exported
    narrow = random_inputs(model.space, lengths, n_per_request, 3, seed=9)
    wide = narrow._replace(history=torch.nn.functional.pad(narrow.history, (0, 0, 0, 40)))
    ctr_n, _ = run(session, narrow)
    ctr_w, att_w = run(session, wide)
    np.testing.assert_allclose(ctr_n, ctr_w, atol=1e-6, rtol=0)
    assert (att_w[:, 3:] == 0).all()
    assert (att_w[n_per_request[0] :] == 0).all()  # request 1, if any, has no history


@pytest.mark.parametrize(
    ("lengths", "n_per_request"), [([5, 9, 0], [7, 3, 2]), ([9], [12])], ids=["R=3", "R=1"]
)
def test_split_first_layer_equals_the_concatenated_layer_in_torch(lengths, n_per_request):
    space = make_space()
    model = trained_like(DINConfig(), space)
    x = random_inputs(space, lengths, n_per_request, 9, seed=3)
    with torch.inference_mode():
        ctr, attention = ServingGraph(model)(*x)
    ref_ctr, ref_attention = reference(model, x)
    np.testing.assert_allclose(ctr.numpy(), ref_ctr, atol=1e-6, rtol=0)
    np.testing.assert_allclose(attention.numpy(), ref_attention, atol=1e-6, rtol=0)


@pytest.mark.parametrize("variant", ["din-default", "din-dice", "din-prelu-softmax"])
def test_both_single_request_forms_equal_the_gather_branch(variant):
    """One request can take any of the three forms; the one-Gemm forms (built per behaviour or per
    candidate) must give the gather form's numbers."""
    space = make_space()
    model = trained_like(VARIANTS[variant], space, SLOPES.get(variant, (-0.5, 1.0)))
    graph = ServingGraph(model)
    x = random_inputs(space, [37], [50], MAX_HISTORY, seed=11, oov_share=0.2)
    with torch.inference_mode():
        e = model.embed_fields(x.history, space.schema.behavior)
        v = model.embed_fields(x.candidate, space.schema.behavior)
        mask = torch.arange(MAX_HISTORY).unsqueeze(0) < x.history_len.unsqueeze(1)
        many = graph.attend_many(e, v, mask, x.request_index)
        for one in (graph.attend_by_history(e, v, mask), graph.attend_by_candidate(e, v, mask)):
            for got, want in zip(one, many, strict=True):  # the same sums in another order
                np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=1e-6)
            assert (one[1][:, 37:] == 0).all() and one[1][:, :37].abs().sum() > 0


@pytest.mark.parametrize("affine", [True, False])
def test_input_norm_folded_into_the_first_linear_gives_the_same_outputs(affine):
    torch.manual_seed(0)
    norm, linear = torch.nn.BatchNorm1d(6, affine=affine), torch.nn.Linear(6, 4)
    norm.train()
    norm(torch.randn(64, 6) * 3 + 2)  # running statistics away from 0 and 1
    if affine:
        with torch.no_grad():
            norm.weight.uniform_(0.5, 2)
            norm.bias.uniform_(-1, 1)
    norm.eval()
    x = torch.randn(32, 6) * 3 + 2
    with torch.no_grad():
        want = linear(norm(x))
        got = fold_norm_into_linear(norm, linear)(x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(want, linear(x), atol=1e-2)  # the norm does change the output


def test_an_input_norm_of_some_dims_folds_into_the_first_linear_and_passes_the_others():
    from model.din import InputNorm

    torch.manual_seed(0)
    norm, linear = InputNorm(2, 5), torch.nn.Linear(7, 4)
    norm.train()
    norm(torch.randn(64, 7) * 3 + 2)
    norm.eval()
    x = torch.randn(32, 7) * 3 + 2
    with torch.no_grad():
        want = linear(norm(x))
        got = fold_norm_into_linear(norm, linear)(x)
        assert torch.equal(norm(x)[:, :2], x[:, :2]) and torch.equal(norm(x)[:, 5:], x[:, 5:])
    np.testing.assert_allclose(got.numpy(), want.numpy(), atol=1e-5, rtol=1e-5)
