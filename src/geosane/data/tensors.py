"""Normalization and an in-memory tensor dataset with remote-sensing augmentations."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "RAW_UNITS",
    "Normalization",
    "TensorImageDataset",
    "flip_rotate",
    "recorded_normalization",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """Per-band mean/std applied after scaling 8-bit images to ``[0, 1]``.

    ``raw``: the statistics are in the units of the raw pixel values (TorchGeo's convention, e.g.
    0-255 or DN), so 8-bit images are not scaled to ``[0, 1]`` first.
    The band axis is the third from the end, so one image ``[C, H, W]``, a batch ``[N, C, H, W]``, a
    temporal stack ``[T, C, H, W]`` and a batch of stacks ``[N, T, C, H, W]`` are all normalised per
    band (the same statistics for every time step).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    raw: bool = False

    @classmethod
    def imagenet(cls, bands: tuple[int, ...] | list[int] | None = None) -> Normalization:
        """ImageNet RGB statistics, for the RGB band indices ``bands`` (default all three)."""
        bands = tuple(bands) if bands is not None else (0, 1, 2)
        return cls(tuple(IMAGENET_MEAN[b] for b in bands), tuple(IMAGENET_STD[b] for b in bands))

    @classmethod
    def from_images(cls, images: torch.Tensor) -> Normalization:
        """Per-band statistics of ``images`` ``[N, C, H, W]`` or ``[N, T, C, H, W]`` (every time step
        pooled; 8-bit images scaled to [0, 1])."""
        x = _to_float(images)
        per_band = x.movedim(-3, 0).reshape(x.shape[-3], -1)
        mean = per_band.mean(dim=1)
        std = per_band.std(dim=1).clamp_min(1e-6)
        return cls(tuple(mean.tolist()), tuple(std.tolist()))

    def for_bands(self, bands: int) -> Normalization | None:
        """These statistics for ``bands`` bands: as they are, repeated when one value is given for
        every band (TorchGeo's ``Normalize(mean=[0], std=[10000])``), None when the counts differ."""
        if len(self.mean) == bands and len(self.std) == bands:
            return self
        if len(self.mean) == 1 and len(self.std) == 1:
            return Normalization(self.mean * bands, self.std * bands, self.raw)
        return None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float() if self.raw else _to_float(images)
        mean = torch.tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)  # bands: third axis from the end
        std = torch.tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
        return (x - mean) / std


RAW_UNITS = "raw input values"


def recorded_normalization(info: Mapping[str, Any]) -> Normalization | None:
    """The per-band mean/std a model source records, or None.

    Read from ``normalization`` or ``metadata.normalization`` (an ONNX model's sidecar) or
    ``metadata.input.normalization`` (what a loader states its model expects: TorchGeo weights,
    GeoFM checkpoints). ``units: "raw input values"`` marks statistics of the raw pixel values
    (:attr:`Normalization.raw`).
    """
    metadata = info.get("metadata") or {}
    inputs = metadata.get("input")
    norm = info.get("normalization") or metadata.get("normalization")
    if norm is None and isinstance(inputs, Mapping):
        norm = inputs.get("normalization")
    if not isinstance(norm, Mapping) or "mean" not in norm or "std" not in norm:
        return None
    return Normalization(
        tuple(float(v) for v in norm["mean"]),
        tuple(float(v) for v in norm["std"]),
        raw=norm.get("units") == RAW_UNITS,
    )


def _to_float(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    return images.float()


class TensorImageDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Normalized images and targets held in memory.

    With ``augment=True`` each sample gets a random horizontal/vertical flip and a random multiple
    of 90 degree rotation (overhead imagery has no canonical orientation); segmentation targets
    ``[H, W]`` are transformed identically.
    """

    def __init__(
        self,
        images: torch.Tensor,
        targets: torch.Tensor,
        normalization: Normalization,
        augment: bool = False,
    ) -> None:
        if images.shape[0] != targets.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {targets.shape[0]} targets")
        self.images = images
        self.targets = targets
        self.normalization = normalization
        self.augment = augment

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.normalization(self.images[index])
        target = self.targets[index]
        if self.augment:
            image, target = flip_rotate(image, target)
        return image.contiguous(), target.contiguous() if target.ndim else target


def flip_rotate(image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal/vertical flip and multiple-of-90-degree rotation of ``image [C, H, W]``.

    A dense ``target [H, W]`` (segmentation mask) gets the same transform; labels pass through.
    """
    dense = target.ndim >= 2
    if torch.rand(()) < 0.5:
        image = image.flip(-1)
        target = target.flip(-1) if dense else target
    if torch.rand(()) < 0.5:
        image = image.flip(-2)
        target = target.flip(-2) if dense else target
    k = int(torch.randint(0, 4, ()))
    if k:
        image = torch.rot90(image, k, dims=(-2, -1))
        target = torch.rot90(target, k, dims=(-2, -1)) if dense else target
    return image, target
