"""Train and evaluate detectors (:func:`geosane.tasks.build_detector`) with Lightning and torchmetrics.

:func:`fit_detection` is :func:`geosane.tasks.fit` for boxes: the same budget (:class:`FitConfig`),
optimiser groups and schedule, per-epoch history, checkpoint-and-resume and progress callbacks
(:class:`DetectionModule` extends :class:`geosane.tasks.FitModule`, as ``TaskModule`` does); what differs is the batch (a
list of targets with any number of boxes, none included), the loss (torchvision's) and the metric:
mAP@50 (``map_50``, the selection metric) and mAP@50:95 (``map``) from torchmetrics'
``MeanAveragePrecision`` (COCO evaluation through pycocotools). Augmentation is box-aware
(``torchvision.transforms.v2`` with ``tv_tensors.BoundingBoxes``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, cast

import lightning as L
import torch
import torchmetrics
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torchmetrics.detection import MeanAveragePrecision
from torchvision import tv_tensors
from torchvision.transforms import v2

from geosane.errors import GeosaneError
from geosane.runs import quiet_lightning
from geosane.tasks.config import FitConfig
from geosane.tasks.detection_models import Detector
from geosane.tasks.loop import FitModule, FitResult, run_lightning_fit

__all__ = [
    "DetectionDataset",
    "DetectionModule",
    "DetectionSamples",
    "RandomGain",
    "check_detection_data",
    "collate_detection",
    "detection_augmentation",
    "detection_map",
    "evaluate_detection",
    "fit_detection",
]

Target = dict[str, torch.Tensor]
Batch = tuple[torch.Tensor, list[Target]]


class DetectionSamples(Protocol):
    """What :func:`fit_detection` reads (``geosane.data.detection.DetectionData``): uint8 images
    ``[N, C, H, W]`` of one size and per image ``boxes`` float ``[n, 4]`` (xyxy pixels) and
    ``labels`` int64 ``[n]`` in ``0..K-1`` (``n`` may be 0)."""

    @property
    def images(self) -> torch.Tensor: ...
    @property
    def targets(self) -> Sequence[Mapping[str, torch.Tensor]]: ...
    @property
    def classes(self) -> tuple[str, ...]: ...
    @property
    def files(self) -> tuple[str, ...]: ...


def check_detection_data(data: DetectionSamples, num_classes: int, name: str = "data") -> None:
    """Refuse targets a detector cannot train on, naming the image and the box (before any output)."""
    images, targets = data.images, data.targets
    if images.ndim != 4:
        raise GeosaneError(f"{name}: images must be [N, C, H, W], got shape {tuple(images.shape)}")
    if len(targets) != images.shape[0]:
        raise GeosaneError(f"{name}: {images.shape[0]} images but {len(targets)} targets")
    height, width = int(images.shape[-2]), int(images.shape[-1])
    for i, target in enumerate(targets):
        where = f"{name} image {i}" + (f" ({data.files[i]})" if i < len(data.files) else "")
        boxes, labels = target.get("boxes"), target.get("labels")
        if boxes is None or labels is None:
            raise GeosaneError(f"{where}: a target needs 'boxes' and 'labels'")
        if boxes.ndim != 2 or boxes.shape[1] != 4 or labels.shape != (boxes.shape[0],):
            raise GeosaneError(
                f"{where}: boxes must be [n, 4] and labels [n], got {tuple(boxes.shape)} and {tuple(labels.shape)}"
            )
        for j, (box, label) in enumerate(zip(boxes.tolist(), labels.tolist(), strict=True)):
            if not 0 <= label < num_classes:
                raise GeosaneError(
                    f"{where}: box {j} {box} has label {label}; the detector has {num_classes} classes "
                    f"(labels 0..{num_classes - 1})"
                )
            x1, y1, x2, y2 = box
            if not (all(map(math.isfinite, box)) and 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height):
                raise GeosaneError(
                    f"{where}: box {j} {box} is not an xyxy box of positive size inside the {width}x{height} image"
                )


class RandomGain(v2.Transform):  # type: ignore[misc]  # torchvision ships no type information
    """Mild photometric jitter for any number of bands: contrast and brightness factors drawn in
    ``[1 - c, 1 + c]`` / ``[1 - b, 1 + b]`` (torchvision's ColorJitter needs 1 or 3 channels)."""

    _transformed_types = (tv_tensors.Image,)

    def __init__(self, brightness: float = 0.1, contrast: float = 0.1) -> None:
        super().__init__()
        self.brightness = brightness
        self.contrast = contrast

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        draw = torch.rand(2)
        return {
            "brightness": 1.0 + self.brightness * (2 * float(draw[0]) - 1),
            "contrast": 1.0 + self.contrast * (2 * float(draw[1]) - 1),
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        mean = inpt.mean()
        out = ((inpt - mean) * params["contrast"] + mean) * params["brightness"]
        return tv_tensors.wrap(out.clamp(0.0, 1.0), like=inpt)


def detection_augmentation(square: bool = True, photometric: bool = True) -> v2.Transform:
    """Random flips, a random multiple of 90 degrees (square images; overhead imagery has no up)
    and mild photometric jitter; boxes follow their objects."""
    steps: list[nn.Module] = [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
    if square:
        steps.append(v2.RandomChoice([v2.RandomRotation((a, a)) for a in (0.0, 90.0, 180.0, 270.0)]))
    if photometric:
        steps.append(RandomGain())
    steps.append(v2.SanitizeBoundingBoxes())
    return v2.Compose(steps)


class DetectionDataset(Dataset[tuple[torch.Tensor, Target]]):
    """Images in ``[0, 1]`` (the detector normalises) and targets, optionally augmented."""

    def __init__(self, data: DetectionSamples, augment: bool = False) -> None:
        self.images = data.images
        self.targets = data.targets
        square = data.images.shape[-1] == data.images.shape[-2]
        self.transform = detection_augmentation(square) if augment else None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Target]:
        image = self.images[index]
        image = image.float().div(255.0) if image.dtype == torch.uint8 else image.float()
        target = self.targets[index]
        boxes = target["boxes"].float().reshape(-1, 4)
        labels = target["labels"].long()
        if self.transform is None:
            return image, {"boxes": boxes, "labels": labels}
        size = (int(image.shape[-2]), int(image.shape[-1]))
        out_image, out = self.transform(
            tv_tensors.Image(image),
            {"boxes": tv_tensors.BoundingBoxes(boxes, format="XYXY", canvas_size=size), "labels": labels},
        )
        return out_image.as_subclass(torch.Tensor), {
            "boxes": out["boxes"].as_subclass(torch.Tensor),
            "labels": out["labels"],
        }


def collate_detection(batch: Sequence[tuple[torch.Tensor, Target]]) -> Batch:
    """Stack the images (one size) and keep the targets a list (any number of boxes each)."""
    return torch.stack([image for image, _ in batch]), [target for _, target in batch]


def _make_map() -> MeanAveragePrecision:
    return MeanAveragePrecision(iou_type="bbox", backend="pycocotools")


def _map_values(metric: MeanAveragePrecision) -> dict[str, float]:
    values = metric.compute()
    # torchmetrics writes -1 where nothing is defined (no ground-truth box at all)
    return {
        key: (float(values[key]) if float(values[key]) >= 0 else float("nan")) for key in ("map_50", "map")
    }


def detection_map(
    preds: Sequence[Mapping[str, torch.Tensor]], targets: Sequence[Mapping[str, torch.Tensor]]
) -> dict[str, float]:
    """mAP@50 (``map_50``) and mAP@50:95 (``map``) of ``preds`` (boxes, scores, labels) against
    ``targets`` (boxes, labels); NaN when ``targets`` hold no box."""
    metric = _make_map()
    metric.update([dict(p) for p in preds], [dict(t) for t in targets])
    return _map_values(metric)


class DetectionModule(FitModule):
    """:class:`FitModule` for a :class:`Detector`: torchvision's summed losses and mAP@50 (primary)
    and mAP@50:95 from torchmetrics; history, checkpoints, frozen backbone and schedule are shared."""

    metric_name = "map_50"

    def __init__(self, model: Detector, config: FitConfig) -> None:
        super().__init__(model, config)

    def configure_metrics(self) -> MeanAveragePrecision:
        return _make_map()

    def compute_metrics(self, metric: torchmetrics.Metric) -> dict[str, float]:
        return _map_values(cast(MeanAveragePrecision, metric))

    def forward(self, x: torch.Tensor, targets: Sequence[Target] | None = None) -> Any:
        return self.model(x, targets)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        images, targets = batch
        losses = self(images, targets)
        loss = cast(torch.Tensor, sum(losses.values()))
        self._epoch_loss.append(float(loss.detach()))
        return loss

    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        images, targets = batch
        metric = self.val_metric if dataloader_idx == 0 else self.report_metric
        metric.update(self(images), targets)


def _loader(data: DetectionSamples, batch_size: int, config: FitConfig, **kwargs: Any) -> DataLoader[Any]:
    return DataLoader(
        DetectionDataset(data, augment=kwargs.pop("augment", False)),
        batch_size=batch_size,
        collate_fn=collate_detection,
        num_workers=config.num_workers,
        **kwargs,
    )


def fit_detection(
    model: Detector,
    train: DetectionSamples,
    select: DetectionSamples | None = None,
    config: FitConfig | None = None,
    checkpoint_path: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    report: DetectionSamples | None = None,
    augment: bool = True,
) -> FitResult:
    """Train ``model`` in place on ``train``; mAP on ``select`` after every epoch (``val_map_50``,
    ``val_map``), the last epoch's values in ``final`` (``map_50``, ``map``).

    As :func:`geosane.tasks.fit`: ``report`` (a test split) is only recorded (``report_map_50`` ...,
    with an epoch-0 row of the initialisation), never used for selection; ``checkpoint_path`` saves
    the run after every epoch and resumes from it when it exists (bitwise, with the data order and
    augmentation RNGs); Ctrl-C raises :class:`geosane.errors.Interrupted`. Targets are checked
    first (labels in ``0..model.num_classes-1``, boxes inside the images).
    """
    config = config or FitConfig()
    if report is not None and select is None:
        raise GeosaneError("a report split needs a select split (its metric is recorded next to select's)")
    for name, part in (("train", train), ("select", select), ("report", report)):
        if part is not None:
            check_detection_data(part, model.num_classes, name)
    quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)
    module = DetectionModule(model, config)
    generator = torch.Generator().manual_seed(config.seed)
    n_train = int(train.images.shape[0])
    train_loader = _loader(
        train, config.batch_size, config, shuffle=True, drop_last=n_train > config.batch_size,
        generator=generator, augment=augment,
    )  # fmt: skip
    val_loaders = [_loader(p, config.batch_size * 2, config) for p in (select, report) if p is not None]
    resume = str(checkpoint_path) if checkpoint_path is not None and Path(checkpoint_path).is_file() else None
    if report is not None and select is not None and resume is None:
        before = {f"val_{k}": v for k, v in evaluate_detection(model, select, config.batch_size * 2).items()}
        before.update(
            {f"report_{k}": v for k, v in evaluate_detection(model, report, config.batch_size * 2).items()}
        )
        module.history.append({"epoch": 0.0, **before})
        model.train()
    run_lightning_fit(
        module, train_loader, val_loaders or None, config, checkpoint_path, resume, generator, callbacks
    )
    result = FitResult(history=module.history)
    if select is not None and module.history:
        last = module.history[-1]
        result.final = {k: last.get(f"val_{k}", float("nan")) for k in ("map_50", "map")}
    model.eval()
    return result


@torch.no_grad()
def evaluate_detection(model: Detector, data: DetectionSamples, batch_size: int = 16) -> dict[str, float]:
    """mAP@50 (``map_50``) and mAP@50:95 (``map``) of ``model`` on ``data`` (eval mode, no gradient)."""
    check_detection_data(data, model.num_classes)
    model.eval()
    metric = _make_map()
    loader = DataLoader(DetectionDataset(data), batch_size=batch_size, collate_fn=collate_detection)
    for images, targets in loader:
        metric.update(model(images), targets)
    return _map_values(metric)
