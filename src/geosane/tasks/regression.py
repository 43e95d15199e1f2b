"""Regression heads on backbone feature pyramids, and their training loop.

The decoder study (``geosane probe --mode decoders``) compares heads on continuous targets as well
as on classes: a value per pixel (dense regression, e.g. a held-out spectral band) or one value per
image (e.g. the cloud fraction of a chip). Both reuse the segmentation decoders of
:mod:`geosane.tasks.heads` with one output channel, so a head means the same thing in every task:

- :class:`RegressionModel`: backbone features -> decoder -> one map; per pixel it is upsampled to
  the input, per image it is averaged over space (for the linear head that is a linear map of the
  spatially averaged features). Outputs are in target units: the head learns a standardised target
  (``shift`` / ``scale`` buffers, the train split's mean and std), so the loss has the same scale
  for every target.
- :func:`fit_regression` is :func:`geosane.tasks.fit` for it: the same budget (:class:`FitConfig`),
  optimiser groups, warm-up + cosine schedule, frozen backbone, history, checkpoint and resume
  (:class:`RegressionModule` extends :class:`geosane.tasks.FitModule`); the loss is the mean
  squared error of the standardised target and the metrics are torchmetrics' RMSE, MAE and R²
  (``r2`` selects).
- :func:`evaluate_regression` scores a model on a dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence, Sized
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset

from geosane.arch.spec import ArchSpec, LoadedModel
from geosane.errors import GeosaneError
from geosane.runs import quiet_lightning
from geosane.tasks.config import FitConfig
from geosane.tasks.loop import FitModule, FitResult, run_lightning_fit
from geosane.tasks.models import SegmentationModel, build_segmenter

__all__ = [
    "REGRESSION_METRICS",
    "RegressionMetrics",
    "RegressionModel",
    "RegressionModule",
    "build_regressor",
    "evaluate_regression",
    "fit_regression",
    "target_statistics",
]

REGRESSION_METRICS = ("r2", "rmse", "mae")


class RegressionModel(nn.Module):
    """Backbone feature pyramid + a one-channel decoder; a map ``[B, H, W]`` or a value ``[B]``."""

    shift: torch.Tensor
    scale: torch.Tensor

    def __init__(
        self, backbone: nn.Module, decoder: nn.Module, per_image: bool, shift: float = 0.0, scale: float = 1.0
    ) -> None:
        super().__init__()
        if not scale > 0:
            raise GeosaneError(f"the target scale must be positive, got {scale} (a constant target?)")
        self.backbone = backbone
        self.decoder = decoder
        self.per_image = per_image
        self.register_buffer("shift", torch.tensor(float(shift)))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def standardised(self, x: torch.Tensor) -> torch.Tensor:
        """The head's output before it is mapped to target units (what the loss sees)."""
        out = self.decoder(self.backbone(x))  # [B, 1, h, w]
        if self.per_image:
            return cast(torch.Tensor, out.mean(dim=(1, 2, 3)))
        return F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.standardised(x) * self.scale + self.shift


def build_regressor(
    arch: ArchSpec | LoadedModel,
    decoder: str,
    per_image: bool,
    shift: float = 0.0,
    scale: float = 1.0,
    in_chans: int | None = None,
    out_indices: int | tuple[int, ...] = 4,
    decoder_channels: int | None = None,
) -> RegressionModel:
    """A regressor: the timm backbone's intermediate features feeding ``decoder`` with one output."""
    segmenter = build_segmenter(
        arch, 1, decoder, in_chans=in_chans, out_indices=out_indices, decoder_channels=decoder_channels
    )
    if not isinstance(segmenter, SegmentationModel):
        raise GeosaneError(
            "regression heads need a timm backbone with forward_intermediates; an smp segmenter keeps its own head"
        )
    return RegressionModel(segmenter.backbone, segmenter.decoder, per_image, shift, scale)


class RegressionMetrics(torchmetrics.MetricCollection):
    """RMSE, MAE and R² over every predicted value (pixels or images), flattened."""

    def __init__(self) -> None:
        super().__init__(
            {
                "r2": torchmetrics.R2Score(),
                "rmse": torchmetrics.MeanSquaredError(squared=False),
                "mae": torchmetrics.MeanAbsoluteError(),
            },
            compute_groups=False,
        )

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:  # type: ignore[override]
        super().update(preds.reshape(-1).float(), target.reshape(-1).float())

    @property
    def update_called(self) -> bool:  # what FitModule asks a metric
        return any(bool(m.update_called) for m in self.values(copy_state=False))

    def scores(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.compute().items()}


class RegressionModule(FitModule):
    """LightningModule for :class:`RegressionModel`: standardised MSE, RMSE / MAE / R² per epoch."""

    metric_name = "r2"

    def __init__(self, model: RegressionModel, config: FitConfig) -> None:
        super().__init__(model, config)

    def configure_metrics(self) -> torchmetrics.Metric:
        return cast(torchmetrics.Metric, RegressionMetrics())

    def compute_metrics(self, metric: torchmetrics.Metric) -> dict[str, float]:
        return cast(RegressionMetrics, metric).scores()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cast(torch.Tensor, self.model(x))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        model = cast(RegressionModel, self.model)
        target = (y.float() - model.shift) / model.scale
        loss = F.mse_loss(model.standardised(x), target)
        self._epoch_loss.append(float(loss.detach()))
        return loss

    def validation_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        x, y = batch
        metric = self.val_metric if dataloader_idx == 0 else self.report_metric
        metric.update(self(x), y)


def fit_regression(
    model: RegressionModel,
    train: Dataset[tuple[torch.Tensor, torch.Tensor]],
    val: Dataset[tuple[torch.Tensor, torch.Tensor]] | None = None,
    config: FitConfig | None = None,
    checkpoint_path: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
) -> FitResult:
    """Train ``model`` in place on ``train``; RMSE / MAE / R² on ``val`` after every epoch
    (``val_r2`` ...), the last epoch's values in ``final``. Checkpoint and resume as
    :func:`geosane.tasks.fit` (Ctrl-C raises :class:`geosane.errors.Interrupted`)."""
    config = config or FitConfig()
    quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)
    module = RegressionModule(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(
        train,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(cast(Sized, train)) > config.batch_size,
        num_workers=config.num_workers,
        generator=generator,
    )
    val_loader = (
        DataLoader(val, batch_size=config.batch_size * 2, num_workers=config.num_workers)
        if val is not None
        else None
    )
    resume = str(checkpoint_path) if checkpoint_path is not None and Path(checkpoint_path).is_file() else None
    run_lightning_fit(module, train_loader, val_loader, config, checkpoint_path, resume, generator, callbacks)
    result = FitResult(history=module.history)
    if val is not None and module.history:
        last = module.history[-1]
        result.final = {k: last.get(f"val_{k}", float("nan")) for k in REGRESSION_METRICS}
    model.eval()
    return result


@torch.no_grad()
def evaluate_regression(
    model: nn.Module, data: Dataset[tuple[torch.Tensor, torch.Tensor]], batch_size: int = 64
) -> dict[str, float]:
    """RMSE, MAE and R² of ``model`` on ``data`` (eval mode, no gradient), in target units."""
    model.eval()
    metric = RegressionMetrics()
    for x, y in DataLoader(data, batch_size=batch_size):
        metric.update(model(x), y)
    return metric.scores()


def target_statistics(targets: torch.Tensor) -> Mapping[str, Any]:
    """Mean and std of a training split's targets (the standardisation :class:`RegressionModel` uses)."""
    values = targets.reshape(-1).double()
    return {"shift": float(values.mean()), "scale": float(values.std(unbiased=False))}
