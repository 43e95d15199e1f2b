"""Regression heads (a value per image or per pixel) on timm backbones: they learn, in target units."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from geosane.data import Normalization, TensorImageDataset
from geosane.errors import GeosaneError
from geosane.tasks import FitConfig
from geosane.tasks.regression import (
    RegressionMetrics,
    build_regressor,
    evaluate_regression,
    fit_regression,
    target_statistics,
)
from geosane.zoo import ArchSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCH = ArchSpec("timm", "resnet10t", {})
NORM = Normalization((0.5, 0.5, 0.5), (0.3, 0.3, 0.3))


def _smooth_images(n: int, seed: int) -> torch.Tensor:
    """Smooth brightness fields (4x4 noise upsampled to 32x32) in all three bands, plus a little noise."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(n, 1, 4, 4, generator=g), size=32, mode="bilinear")
    return base.repeat(1, 3, 1, 1) + 0.05 * torch.rand(n, 3, 32, 32, generator=g)


def test_metrics_are_rmse_mae_and_r2_of_every_value() -> None:
    metric = RegressionMetrics()
    target = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    pred = torch.tensor([[1.5, 2.0], [2.0, 4.0]])
    metric.update(pred, target)
    scores = metric.scores()
    err = (pred - target).flatten()
    r2 = 1 - (err**2).sum() / ((target - target.mean()) ** 2).sum()
    assert scores["rmse"] == pytest.approx(float(err.pow(2).mean().sqrt()))
    assert scores["mae"] == pytest.approx(float(err.abs().mean()))
    assert scores["r2"] == pytest.approx(float(r2))
    assert metric.update_called


def test_per_image_and_per_pixel_heads_learn_in_target_units() -> None:
    train, test = _smooth_images(48, 0), _smooth_images(24, 1)
    # per image: the mean brightness (fine-tuned, linear head); per pixel: band 0 (frozen, U-Net head)
    for per_image, decoder, frozen in ((True, "linear", False), (False, "unet", True)):
        target = (lambda x: x[:, 0].mean(dim=(1, 2))) if per_image else (lambda x: x[:, 0].clone())
        stats = target_statistics(target(train))
        torch.manual_seed(0)
        model = build_regressor(ARCH, decoder, per_image, stats["shift"], stats["scale"], decoder_channels=16)
        train_set = TensorImageDataset(train, target(train), NORM)
        test_set = TensorImageDataset(test, target(test), NORM)
        result = fit_regression(
            model, train_set, test_set, FitConfig(epochs=15, batch_size=16, lr=3e-3, freeze_backbone=frozen)
        )
        scores = evaluate_regression(model, test_set)
        assert scores["r2"] > 0.8, (per_image, scores)
        assert result.final["r2"] == pytest.approx(scores["r2"], abs=1e-5)
        assert (
            len(result.history) == 15 and result.history[-1]["train_loss"] < result.history[0]["train_loss"]
        )
        with torch.no_grad():
            out = model(NORM(test[:4]))
        assert out.shape == ((4,) if per_image else (4, 32, 32))
        # in target units: close to the target, which a standardised output (mean 0, std 1) is not
        assert float((out - target(test[:4])).abs().mean()) < 0.5 * stats["scale"]


def test_a_constant_target_is_refused() -> None:
    with pytest.raises(GeosaneError, match="target scale must be positive"):
        build_regressor(ARCH, "linear", True, 0.3, 0.0)
