"""The serving graph: R requests, each one user against many candidates, in one run.

Shapes: R requests, N candidates over all requests, L history slots, F behaviour fields,
FD = F·D, H1 = first attention layer width.

Scoring a candidate with the training graph means tiling the user's history once per candidate
and running the whole activation unit on [e, v, e−v, e⊙v] for every (candidate, behaviour) pair.
Here the first attention layer is split exactly:

    W·[e; v; e−v; e⊙v] = (W_e + W_d)·e + (W_v − W_d)·v + W_p·(e⊙v)

so the candidate term is computed once per candidate, and only the pair term and the later (narrow)
layers run per pair: a quarter of the first layer's work. The history is an input once per request
and is never tiled by the caller. Dice and PReLU are frozen into eval-mode forms that onnxruntime
runs fast.

One request (R = 1, the common case) takes a faster path: the first layer over all N·L pairs
becomes a single Gemm, with no per-pair elementwise product and no per-candidate copy of the
history. Unit h of the first layer on pair (n, l) is

    e_l·(W_e + W_d)_h + v_n·(W_v − W_d)_h + b_h + Σ_k e_lk·v_nk·W_p,hk

which is bilinear in (e_l, v_n), so it regroups around whichever side is shorter:

- N ≥ L (by history): Q_hl = diag(e_l)·W_p,h + (W_v − W_d)_h is one FD-row per (unit, behaviour),
  and [H1·L, FD] x [FD, N] gives every pair, with the behaviour term and bias as the Gemm's C.
- N < L (by candidate): M_hn = (W_e + W_d)_h + diag(v_n)·W_p,h is one FD-row per (unit, candidate),
  and [H1·N, FD] x [FD, L] gives every pair, with the candidate term and bias as the Gemm's C.

Only the side that is built ([H1, L or N, FD]) costs elementwise work, so building on the shorter
side keeps it small (docs/benchmarks.md has the figures). Units stay on dim 1 ([1, H, pairs]), so every
later layer is one plain Gemm. With R > 1 the same Gemm would score every candidate against every
request's history, so there the history is gathered per candidate instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from contracts.feeds import Inputs
from model.din import DIN, MLP, BaseModel, Dice, InputNorm, pooling_weights

ServingInputs = Inputs[Tensor]  # the serving contract (contracts.feeds) as torch tensors, for export


class FrozenDice(nn.Module):
    """Dice in eval mode on [rows, H]: f(s) = s·(α + (1 − α)·sigmoid((s − E) / sqrt(Var + ε))).

    Both per-unit affine maps are written as inference BatchNormalization, because onnxruntime runs
    that as one fused kernel, while a broadcast Mul/Add over a short last axis is several times
    slower.
    """

    mean: Tensor
    var: Tensor
    alpha: Tensor
    beta: Tensor
    zero: Tensor
    one: Tensor

    def __init__(self, dice: Dice):
        super().__init__()
        self.eps = dice.eps
        self.register_buffer("mean", dice.running_mean.detach().clone())
        self.register_buffer("var", dice.running_var.detach().clone())
        self.register_buffer("alpha", dice.alpha.detach().clone())
        self.register_buffer("beta", 1 - dice.alpha.detach().clone())
        self.register_buffer("zero", torch.zeros_like(self.mean))
        self.register_buffer("one", torch.ones_like(self.mean))

    def forward(self, s: Tensor) -> Tensor:
        p = torch.sigmoid(F.batch_norm(s, self.mean, self.var, training=False, eps=self.eps))
        return s * F.batch_norm(p, self.zero, self.one, self.beta, self.alpha, training=False, eps=0.0)


class FrozenPReLU(nn.Module):
    """PReLU on [rows, H] or [1, H, rows] as max(x, a·x) (exact for slopes a ≤ 1; min(x, a·x) for
    a > 1), with a·x as an inference BatchNormalization. onnxruntime's own PRelu broadcasts its
    per-unit slope slowly; this form is faster (docs/design.md)."""

    slope: Tensor
    zero: Tensor
    one: Tensor
    above_one: Tensor

    def __init__(self, prelu: nn.PReLU):
        super().__init__()
        slope = prelu.weight.detach().clone()
        self.register_buffer("slope", slope)
        self.register_buffer("zero", torch.zeros_like(slope))
        self.register_buffer("one", torch.ones_like(slope))
        self.register_buffer("above_one", slope > 1)
        self.any_above_one = bool(self.above_one.any())

    def forward(self, x: Tensor) -> Tensor:
        scaled = F.batch_norm(x, self.zero, self.one, self.slope, None, training=False, eps=0.0)
        if not self.any_above_one:  # decided once at export: the usual case is one Max
            return torch.maximum(x, scaled)
        above_one = self.above_one.view(-1, *[1] * (x.dim() - 2))  # units sit on dim 1
        return torch.where(above_one, torch.minimum(x, scaled), torch.maximum(x, scaled))


def frozen(mlp: MLP) -> nn.Sequential:
    """The MLP for [rows, H] inputs with its activations in a fast eval-mode form (which also take
    [1, H, rows]: units on dim 1, as BatchNormalization wants them), and an input BatchNorm folded
    into the first Linear."""
    layers = list(mlp)
    if isinstance(layers[0], nn.BatchNorm1d | InputNorm):
        norm, first = layers.pop(0), layers.pop(0)
        assert isinstance(norm, nn.BatchNorm1d | InputNorm) and isinstance(first, nn.Linear)
        layers.insert(0, fold_norm_into_linear(norm, first))

    def fast(m: nn.Module) -> nn.Module:
        if isinstance(m, Dice):
            return FrozenDice(m)
        return FrozenPReLU(m) if isinstance(m, nn.PReLU) else m

    return nn.Sequential(*(fast(m) for m in layers))


def fold_norm_into_linear(norm: nn.BatchNorm1d | InputNorm, linear: nn.Linear) -> nn.Linear:
    """W·(g⊙x + c) + b = (W·diag(g))·x + (W·c + b), with eval-mode BatchNorm as g⊙x + c (g = 1 and
    c = 0 on the dims an InputNorm passes as they are)."""
    bn = norm.norm if isinstance(norm, InputNorm) else norm
    assert bn.running_mean is not None and bn.running_var is not None
    g = torch.rsqrt(bn.running_var + bn.eps)
    c = -bn.running_mean * g
    if bn.affine:
        g, c = g * bn.weight.detach(), c * bn.weight.detach() + bn.bias.detach()
    if isinstance(norm, InputNorm):
        ones, zeros = torch.ones(linear.in_features), torch.zeros(linear.in_features)
        g = torch.cat([ones[: norm.start], g, ones[norm.end :]])
        c = torch.cat([zeros[: norm.start], c, zeros[norm.end :]])
    folded = nn.Linear(linear.in_features, linear.out_features)
    with torch.no_grad():
        folded.weight.copy_(linear.weight * g)
        folded.bias.copy_(linear.bias + linear.weight @ c)
    return folded.eval()


class ServingGraph(nn.Module):
    w_behavior: Tensor
    w_candidate: Tensor
    w_pair: Tensor
    b_first: Tensor
    candidate_by_unit: Tensor
    pair_by_unit: Tensor

    def __init__(self, model: DIN):
        super().__init__()
        model = model.eval()
        self.model, self.schema, self.cfg = model, model.schema, model.cfg
        self.is_din = not isinstance(model, BaseModel)
        first = model.attention[0]
        assert isinstance(first, nn.Linear)
        w_e, w_v, w_d, w_p = first.weight.detach().split(model.behavior_dim, dim=1)  # each [H1, FD]
        self.register_buffer("w_behavior", (w_e + w_d).T.contiguous())  # [FD, H1]
        self.register_buffer("w_candidate", (w_v - w_d).T.contiguous())  # [FD, H1]
        self.register_buffer("w_pair", w_p.T.contiguous())  # [FD, H1]
        self.register_buffer("b_first", first.bias.detach().clone())  # [H1]
        # The same two weights unit-major, for the per-behaviour rows: a transposed view there would
        # make the [H1, L, FD] product non-contiguous, and the export cannot flatten it without a copy.
        self.register_buffer("candidate_by_unit", (w_v - w_d).contiguous())  # [H1, FD]
        self.register_buffer("pair_by_unit", w_p.contiguous())  # [H1, FD]
        self.attention_rest = frozen(model.attention)[1:]  # activation, then the narrow layers
        self.mlp = frozen(model.mlp)

    def forward(
        self,
        profile: Tensor,
        context: Tensor,
        history: Tensor,
        history_len: Tensor,
        candidate: Tensor,
        request_index: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Returns ctr [N] (probabilities) and attention [N, L] (0 on padding)."""
        s, embed = self.schema, self.model.embed_fields
        v = embed(candidate, s.behavior)  # [N, FD]
        e = embed(history, s.behavior)  # [R, L, FD]
        slots = torch.arange(history.shape[1], device=history.device)
        mask = slots.unsqueeze(0) < history_len.unsqueeze(1)  # [R, L]
        if not self.is_din:
            user_interest, weight = self.pool(e, mask, history_len, request_index)
        else:
            user_interest, weight = torch.cond(
                history.shape[0] == 1, self.attend_one, self.attend_many, (e, v, mask, request_index)
            )
        x = torch.cat(
            [
                embed(profile, s.profile)[request_index],
                user_interest,
                v,
                embed(context, s.context)[request_index],
            ],
            dim=1,
        )
        return torch.sigmoid(self.model.calibrated(self.mlp(x).squeeze(1))), weight

    def pool(
        self, e: Tensor, mask: Tensor, history_len: Tensor, request_index: Tensor
    ) -> tuple[Tensor, Tensor]:
        """BaseModel: sum or mean pooling, as v_U [N, FD] and weights [N, L]."""
        per_request = pooling_weights(self.cfg.base_pooling, history_len)  # [R]
        weight = mask[request_index].float() * per_request[request_index].unsqueeze(1)  # [N, L]
        return (weight.unsqueeze(1) @ e[request_index]).squeeze(1), weight

    def attend_one(self, e: Tensor, v: Tensor, mask: Tensor, request_index: Tensor) -> tuple[Tensor, Tensor]:
        """R = 1: the first layer over all N·L pairs as one Gemm (see the module docstring)."""
        by_history = v.shape[0] >= e.shape[1]
        return torch.cond(by_history, self.attend_by_history, self.attend_by_candidate, (e, v, mask))

    def attend_by_history(self, e: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """N ≥ L: one FD-row per (unit, behaviour), against every candidate."""
        history = e[0]  # [L, FD]
        (length, _), n, h1 = history.shape, v.shape[0], self.b_first.shape[0]
        q = self.pair_by_unit.unsqueeze(1) * history.unsqueeze(0)  # [H1, L, FD]
        q = q + self.candidate_by_unit.unsqueeze(1)  # q_hl · v_n = pair + candidate terms of unit h
        behavior_term = (history @ self.w_behavior + self.b_first).t().reshape(-1, 1)  # [H1·L, 1]
        h = torch.addmm(behavior_term, q.view(h1 * length, -1), v.t())  # [H1·L, N]
        score = self.later_layers(h.view(1, h1, length * n)).view(length, n)  # [L, N]
        weight = self.masked(score, mask[0].unsqueeze(1), dim=0).t().contiguous()  # [N, L]
        return weight @ history, weight

    def attend_by_candidate(self, e: Tensor, v: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """N < L: one FD-row per (unit, candidate), against every behaviour."""
        history = e[0]  # [L, FD]
        (length, _), n, h1 = history.shape, v.shape[0], self.b_first.shape[0]
        m = self.w_behavior.unsqueeze(2) + self.w_pair.unsqueeze(2) * v.t().unsqueeze(1)  # [FD, H1, N]
        candidate_term = (v @ self.w_candidate + self.b_first).t().reshape(-1, 1)  # [H1·N, 1]
        h = torch.addmm(candidate_term, m.flatten(1).t(), history.t())  # [H1·N, L]
        score = self.later_layers(h.view(1, h1, n * length)).view(n, length)  # [N, L]
        weight = self.masked(score, mask[0], dim=1)
        return weight @ history, weight

    def later_layers(self, h: Tensor) -> Tensor:
        """The activation unit after its first layer, on [1, H, pairs] (units first): [1, 1, pairs]."""
        for layer in self.attention_rest.children():
            if isinstance(layer, nn.Linear):  # W [H', H] @ h [H, pairs]
                h = torch.addmm(layer.bias.unsqueeze(1), layer.weight, h.squeeze(0)).unsqueeze(0)
            else:
                h = layer(h)
        return h

    def attend_many(self, e: Tensor, v: Tensor, mask: Tensor, request_index: Tensor) -> tuple[Tensor, Tensor]:
        """Any R: each candidate's history gathered inside the graph; the pair term per pair."""
        e_per_candidate = e[request_index]  # [N, L, FD]
        behavior_term = (e @ self.w_behavior)[request_index]  # [N, L, H1], once per behaviour
        candidate_term = (v @ self.w_candidate + self.b_first).unsqueeze(1)  # [N, 1, H1]
        # The only per-pair product, 2-D so onnxruntime fuses it and the add into one Gemm.
        pair = (e_per_candidate * v.unsqueeze(1)).flatten(0, 1) @ self.w_pair  # [N·L, H1]
        h = (behavior_term + candidate_term).flatten(0, 1) + pair
        score = self.attention_rest(h).view(v.shape[0], -1)  # [N, L]
        weight = self.masked(score, mask[request_index], dim=1)
        return (weight.unsqueeze(1) @ e_per_candidate).squeeze(1), weight

    def masked(self, score: Tensor, mask: Tensor, dim: int) -> Tensor:
        """Attention weights from raw scores: 0 on padding, softmax over the real slots along ``dim``
        if configured."""
        if self.cfg.attention_softmax:
            score = torch.softmax(torch.where(mask, score, torch.full_like(score, -1e30)), dim=dim)
        return torch.where(mask, score, torch.zeros_like(score))
