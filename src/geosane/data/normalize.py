"""The one place that decides how a task's images are normalised.

Every stage that feeds images to a model (``zoo build``, ``generate``'s candidate ranking,
``finetune`` / ``compare`` / ``evaluate``, probing and CKA) calls :func:`choose_normalization`
with the user's choice and the *training* split's raw images, so that a model sees the same
inputs whichever stage prepared them:

- ``dataset``: per-band mean/std of the training images (8-bit images scaled to ``[0, 1]``).
- ``imagenet``: ImageNet's RGB statistics; only for RGB images (3 bands, or the RGB band indices
  ``rgb_bands`` of a band subset), and with ``eight_bit`` only for 8-bit ones (the ``[0, 1]``
  scale the statistics describe; float values are not rescaled).
- ``model``: the statistics the model source records (an ONNX sidecar's), which must exist.
- ``auto``: the recorded statistics when the model has them, else ``auto_default`` (``imagenet``
  there only for 8-bit RGB images, ``dataset`` for the others).

SatDiFuser's diffusion UNet instead wants pixels in ``[-1, 1]``: :func:`to_unit_range`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from geosane.data.tensors import Normalization
from geosane.errors import ConfigError

__all__ = [
    "NORMALIZATION_CHOICES",
    "NormalizationChoice",
    "choose_normalization",
    "imagenet_applies",
    "to_unit_range",
]

NormalizationChoice = Literal["auto", "dataset", "imagenet", "model"]
NORMALIZATION_CHOICES: tuple[str, ...] = ("auto", "dataset", "imagenet", "model")


def imagenet_applies(images: torch.Tensor, rgb_bands: Sequence[int] | None = None, eight_bit: bool = False) -> bool:
    """Whether ImageNet's statistics fit ``images [N, (T,) C, H, W]``: RGB (3 bands, or ``rgb_bands`` all
    among the red/green/blue indices 0..2, one per channel), and 8-bit with ``eight_bit``."""
    if rgb_bands is None:
        rgb = int(images.shape[-3]) == 3
    else:
        rgb = len(rgb_bands) == int(images.shape[-3]) and set(rgb_bands) <= {0, 1, 2}
    return rgb and (not eight_bit or images.dtype == torch.uint8)


def choose_normalization(
    choice: str,
    train_images: torch.Tensor,
    *,
    recorded: Normalization | None = None,
    rgb_bands: Sequence[int] | None = None,
    auto_default: Literal["dataset", "imagenet"] = "dataset",
    eight_bit: bool = False,
    strict: bool = True,
    key: str = "data.normalization",
) -> Normalization:
    """The normalisation ``choice`` asks for (see the module doc), from the training images.

    ``recorded``: the model's own statistics (``recorded_normalization(info)``) for ``model`` /
    ``auto``. ``auto_default``: what ``auto`` means without them, ``dataset`` (fine-tuning: the
    model adapts to the data) or ``imagenet`` (frozen pretrained RGB backbones: ImageNet's for
    8-bit RGB images, else the dataset's). ``eight_bit``: ``imagenet`` also needs 8-bit images.
    ``strict``: an ``imagenet`` request the images do not fit raises a :class:`ConfigError` naming
    ``key``; with ``strict=False`` (a recipe-wide preference, as in ``zoo build`` where members pick
    different bands) it falls back to ``dataset``.
    """
    if choice not in NORMALIZATION_CHOICES:
        raise ConfigError(f"{key} must be one of {', '.join(NORMALIZATION_CHOICES)}, got {choice!r}")
    in_chans = int(train_images.shape[-3])  # bands: [N, C, H, W] or temporal [N, T, C, H, W]
    if choice == "model" and recorded is None:
        raise ConfigError(f"{key}=model: the initialization records no normalization; use 'auto' or 'dataset'")
    if choice in ("auto", "model") and recorded is not None:
        fitted = recorded.for_bands(in_chans)
        if fitted is None:
            raise ConfigError(
                f"the initialization's normalization has {len(recorded.mean)} bands, the data has {in_chans}; "
                f"set {key}=dataset (or select bands with data.bands)"
            )
        return fitted
    if choice == "auto":
        choice = auto_default if imagenet_applies(train_images, rgb_bands, eight_bit=True) else "dataset"
    if choice == "imagenet":
        if imagenet_applies(train_images, rgb_bands, eight_bit):
            return Normalization.imagenet(None if rgb_bands is None else tuple(rgb_bands))
        if strict and not imagenet_applies(train_images, rgb_bands):
            raise ConfigError(f"{key}=imagenet needs 3 RGB bands, the data has {in_chans}; use 'dataset'")
        if strict:
            dtype = str(train_images.dtype).replace("torch.", "")
            raise ConfigError(f"{key}=imagenet needs 8-bit RGB images, the data holds {dtype} values; use 'dataset'")
    return Normalization.from_images(train_images)


def to_unit_range(images: torch.Tensor, train_idx: np.ndarray | None = None) -> torch.Tensor:
    """Images as float32 in ``[-1, 1]``, the range diffusion models are trained on.

    8-bit images map linearly (0 -> -1, 255 -> 1); other values per band by the 2nd/98th
    percentiles of the training images ``images[train_idx]`` (all images without it), clipped.
    """
    if images.dtype == torch.uint8:
        return images.float() / 127.5 - 1.0
    ref = images if train_idx is None else images[torch.as_tensor(train_idx)]
    flat = ref.transpose(0, 1).reshape(ref.shape[1], -1).float()
    lo = torch.quantile(flat[:, :: max(flat.shape[1] // 1_000_000, 1)], 0.02, dim=1).view(1, -1, 1, 1)
    hi = torch.quantile(flat[:, :: max(flat.shape[1] // 1_000_000, 1)], 0.98, dim=1).view(1, -1, 1, 1)
    scaled = (images.float() - lo) / (hi - lo).clamp_min(1e-6)
    return (scaled * 2 - 1).clamp(-1, 1)
