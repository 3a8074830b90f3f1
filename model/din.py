"""Deep Interest Network (Zhou et al., KDD 2018) and its BaseModel, in one file.

Shapes: B samples, L behaviour slots (padded), F behaviour/candidate fields, P profile fields,
C context fields, D embedding dim, T = number of real (non-padding) behaviours in the batch.

Attention is computed on the T real behaviours only (packed with ``mask.nonzero``), so padding can
never change a score, Dice's statistics never see padding, and the cost follows the real history
length rather than the padded one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from contracts.schema import N_RESERVED, OOV, PAD, FeatureSpace
from model.config import DINConfig


class Batch(NamedTuple):
    profile: Tensor  # [B, P] int64
    context: Tensor  # [B, C] int64
    candidate: Tensor  # [B, F] int64
    history: Tensor  # [B, L, F] int64, PAD after the real behaviours
    history_len: Tensor  # [B] int64


class Dice(nn.Module):
    """f(s) = p(s)·s + (1 − p(s))·α·s with p(s) = sigmoid((s − E[s]) / sqrt(Var[s] + ε)).

    E and Var are per-unit batch statistics in training and running statistics in eval, where
    Dice is therefore a fixed function. Input is [rows, H]: callers pass real rows only.
    """

    running_mean: Tensor
    running_var: Tensor

    def __init__(self, dim: int, eps: float = 1e-8, momentum: float = 0.1):
        super().__init__()
        self.eps, self.momentum = eps, momentum
        self.alpha = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, s: Tensor) -> Tensor:
        if self.training and s.shape[0] > 0:
            mean, var = s.mean(0), s.var(0, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var, self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        p = torch.sigmoid((s - mean) * torch.rsqrt(var + self.eps))
        return p * s + (1 - p) * self.alpha * s


class InputNorm(nn.Module):
    """BatchNorm over the dims ``[start, end)`` of the input, the others passed as they are."""

    def __init__(self, start: int, end: int):
        super().__init__()
        self.start, self.end = start, end
        self.norm = nn.BatchNorm1d(end - start)

    def forward(self, x: Tensor) -> Tensor:
        inner = self.norm(x[:, self.start : self.end])
        return torch.cat([x[:, : self.start], inner, x[:, self.end :]], dim=1)


class MLP(nn.Sequential):
    def __init__(
        self,
        in_dim: int,
        hidden: tuple[int, ...],
        activation: str,
        cfg: DINConfig,
        input_norm: tuple[int, int] | None = None,
    ):
        """``input_norm``: the span of input dims a BatchNorm normalises first, or None."""
        layers: list[nn.Module] = []
        if input_norm == (0, in_dim):
            layers.append(nn.BatchNorm1d(in_dim))
        elif input_norm is not None:
            layers.append(InputNorm(*input_norm))
        for h in hidden:
            layers.append(nn.Linear(in_dim, h))
            if activation == "dice":
                layers.append(Dice(h, cfg.dice_eps, cfg.dice_momentum))
            elif activation == "prelu":
                layers.append(nn.PReLU(h))
            else:
                raise ValueError(f"activation must be 'dice' or 'prelu', got {activation!r}")
            in_dim = h
        layers.append(nn.Linear(in_dim, 1))
        super().__init__(*layers)


class DIN(nn.Module):
    def __init__(self, cfg: DINConfig, space: FeatureSpace):
        super().__init__()
        self.cfg, self.space, self.schema = cfg, space, space.schema
        d = cfg.embed_dim
        self.embeddings = nn.ModuleDict(
            {name: nn.Embedding(len(v), d, padding_idx=PAD) for name, v in space.vocabs.items()}
        )
        for name, v in space.vocabs.items():  # n_j of the paper, for mini-batch aware regularisation
            self.register_buffer(f"count_{name}", torch.as_tensor(v.counts).clamp(min=1).float())
        for name in space.vocabs:
            weight = self.table(name).weight
            nn.init.normal_(weight, std=0.01)
            with torch.no_grad():
                weight[PAD].zero_()
        s = self.schema
        self.behavior_dim = len(s.behavior) * d
        self.attention = MLP(4 * self.behavior_dim, cfg.attention_hidden, cfg.attention_activation, cfg)
        mlp_in = (len(s.profile) + len(s.context)) * d + 2 * self.behavior_dim
        # The MLP's input is [profile, user interest, candidate, context]; see DINConfig.norm_scope.
        behaviors = (len(s.profile) * d, len(s.profile) * d + 2 * self.behavior_dim)
        norm = None if not cfg.input_norm else behaviors if cfg.norm_scope == "behaviors" else (0, mlp_in)
        self.mlp = MLP(mlp_in, cfg.mlp_hidden, cfg.activation, cfg, norm)
        # The served CTR is sigmoid(scale * logit + bias): the identity until a run on served logs
        # fits it (model.loop), so that the CTRs are the click rates they claim to be there.
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))

    def calibrated(self, logit: Tensor) -> Tensor:
        """The logit the served CTR is the sigmoid of."""
        scale_bias = self.get_buffer("calibration")
        return logit * scale_bias[0] + scale_bias[1]

    # -- embeddings ---------------------------------------------------------------------------
    def table(self, name: str) -> nn.Embedding:
        emb = self.embeddings[name]
        assert isinstance(emb, nn.Embedding)
        return emb

    def embed_fields(self, ids: Tensor, names: tuple[str, ...]) -> Tensor:
        """ids [..., K] -> [..., K*D], one table per name."""
        if not names:
            return ids.new_zeros((*ids.shape[:-1], 0), dtype=torch.float32)
        return torch.cat([self.embeddings[n](ids[..., i]) for i, n in enumerate(names)], dim=-1)

    # -- pooling ------------------------------------------------------------------------------
    def pool_behaviors(self, e: Tensor, rows: Tensor, v: Tensor) -> Tensor:
        """DIN's activation unit. e [T, FD] real behaviours, rows [T] their sample, v [B, FD]."""
        w = self.attention_weights(e, rows, v)  # [T]
        return v.new_zeros(v.shape).index_add_(0, rows, w.unsqueeze(1) * e)  # v_U [B, FD]

    def attention_weights(self, e: Tensor, rows: Tensor, v: Tensor) -> Tensor:
        va = v[rows]  # [T, FD]
        a = self.attention(torch.cat([e, va, e - va, e * va], dim=1)).squeeze(1)  # [T]
        if not self.cfg.attention_softmax:
            return a
        # Softmax per sample over its real behaviours: lay the scores out as [B, L] (rows are sorted,
        # as nonzero returns them), which is much faster than scatter-based segment reductions.
        counts = torch.bincount(rows, minlength=v.shape[0])  # [B]
        slot = torch.arange(len(rows), device=a.device) - (torch.cumsum(counts, 0) - counts)[rows]  # [T]
        grid = a.new_full((v.shape[0], int(counts.max()) if len(rows) else 0), float("-inf"))
        grid[rows, slot] = a
        return torch.softmax(grid, dim=1)[rows, slot]

    # -- forward ------------------------------------------------------------------------------
    def forward(self, b: Batch) -> Tensor:
        """Returns one logit per sample, [B]."""
        s = self.schema
        v = self.embed_fields(b.candidate, s.behavior)  # [B, FD]
        L = b.history.shape[1]
        mask = torch.arange(L, device=v.device) < b.history_len.unsqueeze(1)  # [B, L]
        rows, cols = mask.nonzero(as_tuple=True)  # [T], [T]
        e = self.embed_fields(b.history[rows, cols], s.behavior)  # [T, FD]
        user_interest = self.pool_behaviors(e, rows, v)  # [B, FD]
        x = torch.cat(
            [
                self.embed_fields(b.profile, s.profile),  # [B, P*D]
                user_interest,
                v,
                self.embed_fields(b.context, s.context),  # [B, C*D]
            ],
            dim=1,
        )
        return self.mlp(x).squeeze(1)

    # -- regularisation -----------------------------------------------------------------------
    def regularization(self, b: Batch) -> Tensor:
        """λ·Σ_j ||w_j||² / n_j over rows used in this mini-batch (MBA), or λ·||W||² (l2), or 0."""
        cfg = self.cfg
        zero = torch.zeros((), device=b.candidate.device)
        if cfg.regularization == "none" or cfg.reg_lambda == 0:
            return zero
        if cfg.regularization == "l2":
            return cfg.reg_lambda * sum((self.table(n).weight.square().sum() for n in self.embeddings), zero)
        if cfg.regularization != "mba":
            raise ValueError(f"regularization must be 'mba', 'l2' or 'none', got {cfg.regularization!r}")
        total = zero
        for name, ids in self._ids_by_feature(b).items():
            used = torch.unique(ids)
            used = used[used > OOV]  # padding, and "unknown", which stands for every id of its kind
            w = self.table(name).weight[used]  # [U, D]
            n = self.get_buffer(f"count_{name}")[used]  # [U]
            total = total + (w.square().sum(1) / n).sum()
        return cfg.reg_lambda * total

    def _ids_by_feature(self, b: Batch) -> dict[str, Tensor]:
        s = self.schema
        ids = {n: b.profile[:, i] for i, n in enumerate(s.profile)}
        ids |= {n: b.context[:, i] for i, n in enumerate(s.context)}
        for i, n in enumerate(s.behavior):
            ids[n] = torch.cat([b.candidate[:, i], b.history[..., i].reshape(-1)])
        return ids


def pooling_weights(pooling: str, history_len: Tensor) -> Tensor:
    """BaseModel: the weight of every behaviour of each sample, [B]: 1 for sum pooling, 1 / the
    history's length for mean pooling. Training, the serving graph and export's reference all
    pool through this one definition."""
    if pooling == "sum":
        return torch.ones_like(history_len, dtype=torch.float32)
    if pooling == "mean":
        return 1 / history_len.clamp(min=1).float()
    raise ValueError(f"base_pooling must be 'sum' or 'mean', got {pooling!r}")


class BaseModel(DIN):
    """The paper's BaseModel: the same embeddings and MLP, with sum (or mean) pooling of behaviours."""

    def pool_behaviors(self, e: Tensor, rows: Tensor, v: Tensor) -> Tensor:
        lengths = torch.bincount(rows, minlength=v.shape[0])  # [B]
        weight = pooling_weights(self.cfg.base_pooling, lengths)[rows].unsqueeze(1)  # [n_behaviours, 1]
        return v.new_zeros(v.shape).index_add_(0, rows, e * weight)  # [B, FD]


def build_model(cfg: DINConfig, space: FeatureSpace) -> DIN:
    if cfg.model == "din":
        return DIN(cfg, space)
    if cfg.model == "base":
        return BaseModel(cfg, space)
    raise ValueError(f"model must be 'din' or 'base', got {cfg.model!r}")


@dataclass
class Checkpoint:
    """Everything needed to rebuild a trained model: no hyper-parameter lives anywhere else."""

    config: DINConfig
    space: FeatureSpace
    state_dict: dict[str, Tensor]
    extra: dict[str, Any] = field(default_factory=dict)  # training data, metrics, ...

    def save(self, path: str) -> None:
        torch.save(
            {
                "config": self.config.to_dict(),
                "space": self.space.to_dict(),
                "state_dict": self.state_dict,
                "extra": self.extra,
            },
            path,
        )

    @classmethod
    def load(cls, path: str) -> Checkpoint:
        d = torch.load(path, map_location="cpu", weights_only=True)
        state = d["state_dict"]
        state.setdefault("calibration", torch.tensor([1.0, 0.0]))  # runs from before calibration
        return cls(DINConfig.from_dict(d["config"]), FeatureSpace.from_dict(d["space"]), state, d["extra"])

    @property
    def max_history(self) -> int:
        """Behaviours per sample in training, and so the serving graph's history length (100 for
        checkpoints that did not record it)."""
        return int(self.extra.get("max_history", 100))

    def build(self) -> DIN:
        model = build_model(self.config, self.space)
        model.load_state_dict(self.state_dict)
        return model.eval()


def warm_start(start: Checkpoint, space: FeatureSpace) -> DIN:
    """A model over ``space`` (``start.space`` extended with new ids) that begins where ``start``
    ended: every id it knew keeps its embedding row, new ids get fresh rows, and every other weight
    is carried over. The MBA frequency counts are the new data's."""
    model = build_model(start.config, space)
    state = model.state_dict()
    for name, tensor in start.state_dict.items():
        if name.startswith("count_") or name == "calibration":  # the new data's; fitted anew
            continue
        if name.startswith("embeddings.") and name.endswith(".weight"):
            feature = name.split(".")[1]
            old, new = start.space.vocabs[feature], space.vocabs[feature]
            rows = torch.from_numpy(new.encode(old.keys))  # each known id's index in the new vocabulary
            table = state[name].clone()
            table[:N_RESERVED] = tensor[:N_RESERVED]
            table[rows] = tensor[N_RESERVED:]
            state[name] = table
        else:
            state[name] = tensor
    model.load_state_dict(state)
    return model
