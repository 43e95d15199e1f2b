"""Cloud / cloud-shadow segmentation scenes (ukis-csmask format) cut into chips.

Each scene file is an ``.npz`` with ``img`` float32 ``[H, W, 6]`` reflectance (blue, green, red,
nir, swir1, swir2) and ``msk`` uint8 ``[H, W, 1]`` with 0 = shadow, 1-3 = clear, 4 = cloud.
Masks are mapped to three classes: 0 = clear, 1 = cloud, 2 = shadow; any other value becomes the
``ignore_index`` (255) and is never scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from geosane.errors import DataError

__all__ = ["CSMASK_BANDS", "CSMASK_CLASSES", "IGNORE_INDEX", "SegmentationChips", "load_csmask"]

CSMASK_BANDS = ("blue", "green", "red", "nir", "swir1", "swir2")
CSMASK_CLASSES = ("clear", "cloud", "shadow")
IGNORE_INDEX = 255

# source value -> class index (0 shadow, 1-3 clear, 4 cloud)
_VALUE_TO_CLASS = {0: 2, 1: 0, 2: 0, 3: 0, 4: 1}


@dataclass(frozen=True)
class SegmentationChips:
    """Chips ``images [N, C, h, w]`` float32, ``masks [N, h, w]`` int64, and the scene of each chip.

    ``origins`` holds each chip's (top, left) pixel in its scene (empty when unknown).
    """

    images: torch.Tensor
    masks: torch.Tensor
    scenes: tuple[str, ...]
    classes: tuple[str, ...]
    bands: tuple[str, ...]
    origins: tuple[tuple[int, int], ...] = ()

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: np.ndarray | list[int]) -> SegmentationChips:
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return SegmentationChips(
            self.images[idx],
            self.masks[idx],
            tuple(self.scenes[i] for i in idx.tolist()),
            self.classes,
            self.bands,
            tuple(self.origins[i] for i in idx.tolist()) if self.origins else (),
        )

    def scene_indices(self, scenes: list[str] | tuple[str, ...]) -> np.ndarray:
        """Indices of chips cut from the named scenes."""
        unknown = sorted(set(scenes) - set(self.scenes))
        if unknown:
            raise DataError(f"unknown scene(s) {unknown}; available: {sorted(set(self.scenes))}")
        return np.flatnonzero(np.isin(np.asarray(self.scenes), list(scenes)))

    def block_groups(self, block_size: int) -> tuple[str, ...]:
        """A group name per chip: its scene and the ``block_size`` spatial block holding its origin.

        Splitting by these groups keeps nearby chips (same block) in one split.
        """
        if not self.origins:
            raise DataError("these chips carry no origins; block groups need load_csmask chips")
        if block_size <= 0:
            raise DataError(f"block_size must be positive, got {block_size}")
        return tuple(
            f"{scene}/{top // block_size}-{left // block_size}"
            for scene, (top, left) in zip(self.scenes, self.origins, strict=True)
        )


def _map_mask(msk: np.ndarray) -> np.ndarray:
    out = np.full(msk.shape, IGNORE_INDEX, dtype=np.int64)
    for value, cls in _VALUE_TO_CLASS.items():
        out[msk == value] = cls
    return out


def load_csmask(root: str | Path, chip_size: int = 64, stride: int | None = None) -> SegmentationChips:
    """Load every ``*.npz`` scene under ``root`` and cut it into ``chip_size`` chips.

    ``stride`` defaults to ``chip_size`` (no overlap). The scene name (file stem) of every chip is
    kept so that splits can keep scenes apart.
    """
    root = Path(root).expanduser()
    files = sorted(root.glob("*.npz")) if root.is_dir() else []
    if not files:
        raise DataError(f"no .npz scenes found in {root} (expected ukis-csmask style img/msk arrays)")
    stride = stride or chip_size
    images, masks, scenes, origins = [], [], [], []
    for file in files:
        try:
            with np.load(file, allow_pickle=False) as data:
                img, msk = data["img"], data["msk"]
        except (KeyError, ValueError, OSError) as exc:
            raise DataError(f"{file}: not a csmask scene with 'img' and 'msk' arrays ({exc})") from None
        if img.ndim != 3 or msk.shape[:2] != img.shape[:2]:
            raise DataError(f"{file}: img {img.shape} and msk {msk.shape} do not match as [H, W, C]")
        height, width = img.shape[:2]
        if height < chip_size or width < chip_size:
            raise DataError(f"{file}: scene {height}x{width} is smaller than chip_size {chip_size}")
        label = _map_mask(msk[..., 0] if msk.ndim == 3 else msk)
        for top in range(0, height - chip_size + 1, stride):
            for left in range(0, width - chip_size + 1, stride):
                window = (slice(top, top + chip_size), slice(left, left + chip_size))
                images.append(np.ascontiguousarray(img[window].transpose(2, 0, 1), dtype=np.float32))
                masks.append(label[window])
                scenes.append(file.stem)
                origins.append((top, left))
    return SegmentationChips(
        images=torch.from_numpy(np.stack(images)),
        masks=torch.from_numpy(np.stack(masks)),
        scenes=tuple(scenes),
        classes=CSMASK_CLASSES,
        bands=CSMASK_BANDS,
        origins=tuple(origins),
    )
