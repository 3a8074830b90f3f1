import math

import pytest
import torch

from contracts.schema import FeatureSpace
from model.config import DINConfig
from model.din import BaseModel, Batch, Checkpoint, Dice, InputNorm, build_model
from tests.model.conftest import random_batch


def sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_dice_matches_the_paper_formula_on_a_hand_sized_batch():
    dice = Dice(2, eps=1e-8).train()
    with torch.no_grad():
        dice.alpha.copy_(torch.tensor([0.5, -1.0]))
    s = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    # per unit: E[s] = [2, 4], Var[s] = [1, 4], so (s - E) / sqrt(Var) = -1 for row 0 and +1 for row 1
    p0, p1 = sigmoid(-1), sigmoid(1)
    expected = torch.tensor(
        [
            [p0 * 1 + (1 - p0) * 0.5 * 1, p0 * 2 + (1 - p0) * -1 * 2],
            [p1 * 3 + (1 - p1) * 0.5 * 3, p1 * 6 + (1 - p1) * -1 * 6],
        ]
    )
    torch.testing.assert_close(dice(s), expected, atol=1e-6, rtol=0)


def test_dice_eval_uses_running_statistics_not_the_batch():
    dice = Dice(2, eps=1e-8, momentum=0.1).train()
    dice(torch.tensor([[1.0, 2.0], [3.0, 6.0]]))
    torch.testing.assert_close(dice.running_mean, torch.tensor([0.2, 0.4]))
    torch.testing.assert_close(dice.running_var, torch.tensor([1.0, 1.3]))
    dice.eval()
    x = torch.tensor([[0.7, -0.3]])
    p = torch.sigmoid((x - torch.tensor([0.2, 0.4])) / torch.sqrt(torch.tensor([1.0, 1.3]) + 1e-8))
    torch.testing.assert_close(dice(x), p * x)  # alpha is 0 at init
    # in eval a row's output does not depend on the other rows of its batch
    both = dice(torch.cat([x, torch.tensor([[100.0, 100.0]])]))
    torch.testing.assert_close(both[:1], dice(x))


def test_mini_batch_aware_regularisation_equals_a_hand_computed_penalty(space: FeatureSpace):
    cfg = DINConfig(embed_dim=2, regularization="mba", reg_lambda=0.5)
    model = build_model(cfg, space)
    with torch.no_grad():
        for name in model.embeddings:
            model.table(name).weight.fill_(1.0)  # every row has ||w||^2 = 2
        model.table("item_id").weight[5] = torch.tensor([3.0, 4.0])  # ||w||^2 = 25
    # items used: candidate 5, history 5, 7 (+ padding, which never counts); categories: 2, 3
    b = Batch(
        profile=torch.tensor([[2, 3]]),
        context=torch.tensor([[4]]),
        candidate=torch.tensor([[5, 2]]),
        history=torch.tensor([[[5, 3], [7, 2], [0, 0]]]),
        history_len=torch.tensor([2]),
    )
    n = {name: v.counts for name, v in space.vocabs.items()}
    expected = 0.5 * (
        25 / n["item_id"][5]
        + 2 / n["item_id"][7]
        + 2 / n["category_id"][2]
        + 2 / n["category_id"][3]
        + 2 / n["age"][2]
        + 2 / n["gender"][3]
        + 2 / n["hour"][4]
    )
    assert model.regularization(b).item() == pytest.approx(expected, rel=1e-6)
    # only the rows used in the batch get a gradient from the penalty
    model.regularization(b).backward()
    grad = model.table("item_id").weight.grad
    assert grad is not None
    assert set(grad.abs().sum(1).nonzero().flatten().tolist()) == {5, 7}


def test_full_table_l2_and_none_regularisation(space: FeatureSpace):
    b = random_batch(space, 4, 3)
    l2 = build_model(DINConfig(regularization="l2", reg_lambda=0.1), space)
    expected = 0.1 * sum(l2.table(n).weight.square().sum() for n in l2.embeddings)
    torch.testing.assert_close(l2.regularization(b), expected)
    assert build_model(DINConfig(regularization="none"), space).regularization(b).item() == 0


@pytest.mark.parametrize("model_name", ["din", "base"])
@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize("train", [False, True])
def test_padding_positions_never_change_any_output(
    space: FeatureSpace, model_name: str, softmax: bool, train: bool
):
    model = build_model(DINConfig(model=model_name, attention_softmax=softmax), space).train(train)
    b = random_batch(space, 16, 5, lengths=[0, 1, 2, 3, 4, 5] * 2 + [5, 5, 1, 0])
    # four more padding columns, and garbage ids written into every padded slot
    real = (torch.arange(9) < b.history_len.unsqueeze(1)).unsqueeze(-1)  # [16, 9, 1]
    extended = torch.nn.functional.pad(b.history, (0, 0, 0, 4))
    garbage = torch.randint(1, 20, (16, 9, 2), generator=torch.Generator().manual_seed(1))
    padded = b._replace(history=torch.where(real, extended, garbage))
    torch.testing.assert_close(model(b), model(padded), atol=0, rtol=0)


@pytest.mark.parametrize("model_name", ["din", "base"])
@pytest.mark.parametrize("softmax", [False, True])
def test_an_empty_history_gives_a_finite_score(space: FeatureSpace, model_name: str, softmax: bool):
    model = build_model(DINConfig(model=model_name, attention_softmax=softmax), space)
    for train in (True, False):
        model.train(train)
        out = model(random_batch(space, 3, 4, lengths=[0, 0, 0]))
        assert out.shape == (3,) and torch.isfinite(out).all()
        out = model(random_batch(space, 3, 0, lengths=[0, 0, 0]))
        assert torch.isfinite(out).all()


def test_din_attention_weights_are_not_softmax_normalised_by_default(space: FeatureSpace):
    model = build_model(DINConfig(), space).eval()
    b = random_batch(space, 4, 6, lengths=[6, 6, 6, 6])
    v = model.embed_fields(b.candidate, space.schema.behavior)
    rows = torch.arange(4).repeat_interleave(6)
    e = model.embed_fields(b.history.reshape(24, 2), space.schema.behavior)
    raw = model.attention_weights(e, rows, v)
    model.cfg.attention_softmax = True
    soft = model.attention_weights(e, rows, v)
    sums = torch.zeros(4).index_add_(0, rows, soft)
    torch.testing.assert_close(sums, torch.ones(4))
    assert not torch.allclose(torch.zeros(4).index_add_(0, rows, raw), torch.ones(4))
    torch.testing.assert_close(soft, torch.cat([torch.softmax(r, 0) for r in raw.view(4, 6)]))


def test_base_model_pools_by_sum_or_mean(space: FeatureSpace):
    b = random_batch(space, 2, 3, lengths=[3, 2])
    for pooling in ("sum", "mean"):
        model = build_model(DINConfig(model="base", base_pooling=pooling), space).eval()
        assert isinstance(model, BaseModel)
        e = model.embed_fields(b.history, space.schema.behavior)  # [2, 3, FD]
        expected = torch.stack([e[0].sum(0), e[1, :2].sum(0)])
        if pooling == "mean":
            expected = expected / torch.tensor([[3.0], [2.0]])
        rows = torch.tensor([0, 0, 0, 1, 1])
        got = model.pool_behaviors(torch.cat([e[0], e[1, :2]]), rows, torch.zeros(2, e.shape[-1]))
        torch.testing.assert_close(got, expected)


def test_a_checkpoint_reloads_into_an_identical_model(space: FeatureSpace, tmp_path):
    cfg = DINConfig(activation="dice", attention_hidden=(8, 4), mlp_hidden=(16,))
    model = build_model(cfg, space)
    model.train()
    b = random_batch(space, 32, 7)
    model(b)  # moves Dice's running statistics away from their initial values
    model.eval()
    Checkpoint(cfg, space, model.state_dict(), extra={"note": "x"}).save(str(tmp_path / "ckpt.pt"))
    ckpt = Checkpoint.load(str(tmp_path / "ckpt.pt"))
    again = ckpt.build()
    assert ckpt.config == cfg and ckpt.extra == {"note": "x"}
    assert ckpt.space.to_dict() == space.to_dict()
    torch.testing.assert_close(again(b), model(b), atol=0, rtol=0)


def test_invalid_choices_are_rejected_with_their_name(space: FeatureSpace):
    with pytest.raises(ValueError, match="activation"):
        build_model(DINConfig(activation="relu"), space)
    with pytest.raises(ValueError, match="model"):
        build_model(DINConfig(model="dien"), space)


def test_each_mlp_gets_its_own_activation_and_the_final_one_a_batchnorm_input(space: FeatureSpace):
    model = build_model(DINConfig(activation="dice", attention_activation="prelu"), space)
    assert any(isinstance(m, torch.nn.PReLU) for m in model.attention)
    assert not any(isinstance(m, Dice) for m in model.attention)
    # The input norm over the behaviours: the profile and context embeddings pass as they are.
    norm = model.mlp[0]
    assert isinstance(norm, InputNorm) and any(isinstance(m, Dice) for m in model.mlp)
    d, fd = 32, 2 * 32
    assert (norm.start, norm.end) == (2 * d, 2 * d + 2 * fd)  # space: profile age and gender
    assert isinstance(build_model(DINConfig(norm_scope="all"), space).mlp[0], torch.nn.BatchNorm1d)
    plain = build_model(DINConfig(input_norm=False), space)
    assert isinstance(plain.mlp[0], torch.nn.Linear)


def test_a_config_saved_before_per_mlp_activations_reloads_as_it_was_trained():
    old = DINConfig().to_dict()
    del old["attention_activation"], old["input_norm"], old["norm_scope"]
    cfg = DINConfig.from_dict(old | {"activation": "dice"})
    assert cfg.attention_activation == "dice" and cfg.input_norm is False and cfg.norm_scope == "all"


def test_a_warm_start_keeps_each_known_ids_embedding_and_every_other_weight(space: FeatureSpace):
    import numpy as np

    from model.din import warm_start

    start = Checkpoint(DINConfig(), space, build_model(DINConfig(), space).state_dict())
    new_items = np.array([1000, 1001, 5])  # two new ids and a known one
    columns = {n: v.keys for n, v in space.vocabs.items()} | {"item_id": new_items}
    extended = space.extended(columns)
    model = warm_start(start, extended)
    old_v, new_v = space.vocabs["item_id"], extended.vocabs["item_id"]
    old_w, new_w = (
        start.state_dict["embeddings.item_id.weight"],
        model.state_dict()["embeddings.item_id.weight"],
    )
    assert new_w.shape[0] == old_w.shape[0] + 2
    for raw in (0, 5, 299):  # each known id's row moved with it
        assert torch.equal(new_w[new_v.encode(np.array([raw]))[0]], old_w[old_v.encode(np.array([raw]))[0]])
    assert torch.equal(new_w[:2], old_w[:2])  # padding and unknown
    assert not torch.equal(new_w[new_v.encode(np.array([1000]))[0]], old_w[1])  # a fresh row for a new id
    for name, tensor in start.state_dict.items():
        if not name.startswith(("embeddings.", "count_")):
            assert torch.equal(model.state_dict()[name], tensor), name
