from typing import Any

import numpy as np
import pytest
import torch

from model.loop import fit_calibration, level_shift


class Fixed(torch.nn.Module):
    """A model whose logits are given: what fit_calibration reads from a trained DIN."""

    def __init__(self, logits: np.ndarray):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))

    def forward(self, batch: slice) -> torch.Tensor:
        return self.logits[batch]


def model_of(logits: np.ndarray) -> Any:
    return Fixed(logits)


class Slice:
    def __init__(self, label: np.ndarray):
        self.label = label

    def batches(self, size: int):
        for start in range(0, len(self.label), size):
            yield slice(start, start + size), None


def calibrated(model: Any, label: np.ndarray) -> tuple[float, float]:
    slice_: Any = Slice(label)
    fitted = fit_calibration(model, slice_)
    assert fitted is not None
    return fitted


def test_calibration_fits_scale_and_bias_on_a_slice_that_agrees_with_the_ranking():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=4000)
    label = (rng.random(4000) < 1 / (1 + np.exp(-(2 * logits - 1)))).astype(np.float32)
    scale, bias = calibrated(model_of(logits), label)
    assert scale == pytest.approx(2, abs=0.2) and bias == pytest.approx(-1, abs=0.2)


def test_calibration_never_turns_the_ranking_upside_down():
    """A validation slice whose clicks fall as the logit rises (a tiny or noisy slice) moves only
    the level of the CTRs: scale 1, and the mean CTR equals the slice's click rate."""
    logits = np.linspace(-2, 2, 40)
    label = (logits < -1).astype(np.float32)  # the lowest logits clicked
    model = model_of(logits)
    scale, bias = calibrated(model, label)
    assert scale == 1.0
    assert np.mean(1 / (1 + np.exp(-(logits + bias)))) == pytest.approx(label.mean(), abs=1e-6)
    assert model.get_buffer("calibration").tolist() == pytest.approx([1.0, bias])


def test_level_shift_matches_the_click_rate():
    logits = np.array([-1.0, 0.0, 3.0])
    b = level_shift(logits, np.array([0.0, 1.0, 0.0]))
    assert np.mean(1 / (1 + np.exp(-(logits + b)))) == pytest.approx(1 / 3, abs=1e-9)
