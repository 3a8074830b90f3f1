from __future__ import annotations

import numpy as np
import pytest
import torch

from contracts.schema import FeatureSchema, FeatureSpace
from model.din import Batch


def make_space() -> FeatureSpace:
    """All four groups, with vocabularies of known sizes and counts."""
    rng = np.random.default_rng(0)
    schema = FeatureSchema(profile=("age", "gender"), behavior=("item_id", "category_id"), context=("hour",))
    return FeatureSpace.build(
        schema,
        {
            "age": rng.integers(18, 60, 500),
            "gender": rng.choice(["F", "M"], 500),
            "item_id": rng.integers(0, 300, 5000),
            "category_id": rng.integers(0, 20, 5000),
            "hour": rng.integers(0, 24, 500),
        },
    )


@pytest.fixture
def space() -> FeatureSpace:
    return make_space()


def random_batch(
    space: FeatureSpace, b: int, width: int, seed: int = 0, lengths: list[int] | None = None
) -> Batch:
    g = torch.Generator().manual_seed(seed)
    s = space.schema

    def ids(names: tuple[str, ...], *shape: int) -> torch.Tensor:
        cols = [torch.randint(1, len(space.vocabs[n]), shape, generator=g) for n in names]
        return torch.stack(cols, dim=-1) if cols else torch.zeros((*shape, 0), dtype=torch.long)

    hist_len = (
        torch.tensor(lengths) if lengths is not None else torch.randint(0, width + 1, (b,), generator=g)
    )
    history = ids(s.behavior, b, width)
    history[torch.arange(width) >= hist_len.unsqueeze(1)] = 0
    return Batch(ids(s.profile, b), ids(s.context, b), ids(s.behavior, b), history, hist_len)
