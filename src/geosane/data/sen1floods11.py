"""Sen1Floods11 (Bonafilia et al. 2020): hand-labelled flood chips, read from its published layout.

TorchGeo 0.8 has no Sen1Floods11 class, so geosane reads the v1.1 release as the authors publish it
(``gs://sen1floods11/v1.1``, https://github.com/cloudtostreet/Sen1Floods11)::

    ROOT/data/flood_events/HandLabeled/S1Hand/<Country>_<id>_S1Hand.tif     2 bands: VV, VH (dB)
    ROOT/data/flood_events/HandLabeled/S2Hand/<Country>_<id>_S2Hand.tif     13 bands: B1 .. B12 (L1C)
    ROOT/data/flood_events/HandLabeled/LabelHand/<Country>_<id>_LabelHand.tif  -1 no data, 0 land, 1 water
    ROOT/splits/flood_handlabeled/flood_{train,valid,test}_data.csv        <chip>_S1Hand.tif,<chip>_LabelHand.tif

The three split files are geosane's train / select / test (``valid`` is select). Labels ``-1``
become ``IGNORE_INDEX`` (never scored). Missing radar values (NaN in S1 chips) become 0. Images are
single-time ``[C, H, W]`` float32 chips of 512 px, resized (bilinear; labels nearest) to
``image_size``.
"""

from __future__ import annotations

import csv
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from geosane.data.csmask import IGNORE_INDEX
from geosane.data.task import SPLITS, cap_samples
from geosane.errors import DataError

__all__ = [
    "SEN1FLOODS11_BANDS",
    "SEN1FLOODS11_CLASSES",
    "SEN1FLOODS11_SPLIT_FILES",
    "Sen1Floods11Split",
    "load_sen1floods11",
]

Sensor = Literal["s1", "s2"]
SEN1FLOODS11_CLASSES: tuple[str, ...] = ("land", "water")
SEN1FLOODS11_BANDS: dict[str, tuple[str, ...]] = {
    "s1": ("VV", "VH"),
    "s2": ("B1", "B2", "B3", "B4", "B5", "B6", "B7", "B8", "B8A", "B9", "B10", "B11", "B12"),
}
# geosane split -> the release's split file
SEN1FLOODS11_SPLIT_FILES = {
    "train": "flood_train_data.csv",
    "select": "flood_valid_data.csv",
    "test": "flood_test_data.csv",
}
HAND_LABELED = Path("data", "flood_events", "HandLabeled")
SPLIT_DIR = Path("splits", "flood_handlabeled")
_FOLDER = {"s1": "S1Hand", "s2": "S2Hand"}


@dataclass(frozen=True)
class Sen1Floods11Split:
    """One split in memory: images ``[N, C, H, W]``, masks ``[N, H, W]`` and the chip ids."""

    images: torch.Tensor
    masks: torch.Tensor
    chips: tuple[str, ...]


def _read_tif(path: Path) -> np.ndarray:
    try:  # rasterio comes with the torchgeo extra (GDAL reads every GeoTIFF compression)
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning
    except ImportError:
        raise DataError(
            "Sen1Floods11's GeoTIFFs are read with rasterio: pip install 'geosane[torchgeo]' (or rasterio)"
        ) from None

    if not path.is_file():
        raise DataError(f"Sen1Floods11: {path} is missing (listed in the split file)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(path) as source:
                return np.asarray(source.read())
        except rasterio.errors.RasterioIOError as exc:
            raise DataError(f"Sen1Floods11: cannot read {path}: {exc}") from None


def _split_chips(root: Path, split: str) -> list[str]:
    """Chip ids (``<Country>_<id>``) of one split, from the release's split CSV."""
    path = root / SPLIT_DIR / SEN1FLOODS11_SPLIT_FILES[split]
    if not path.is_file():
        raise DataError(
            f"Sen1Floods11 split file {path} not found; data.root must be the release folder (v1.1) holding "
            f"{SPLIT_DIR}/ and {HAND_LABELED}/"
        )
    chips = []
    with open(path, newline="", encoding="utf-8") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row or not row[0].strip():
                continue
            name = Path(row[0].strip()).name
            if not name.endswith("_S1Hand.tif"):
                raise DataError(
                    f"{path}:{line}: expected '<chip>_S1Hand.tif,<chip>_LabelHand.tif', got {row}"
                )
            chips.append(name.removesuffix("_S1Hand.tif"))
    if not chips:
        raise DataError(f"Sen1Floods11 split file {path} lists no chips")
    return chips


def _resize(image: torch.Tensor, mask: torch.Tensor, size: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    if size is None or tuple(image.shape[-2:]) == (size, size):
        return image, mask
    image = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True)[0]
    mask = F.interpolate(mask[None, None].float(), size=(size, size), mode="nearest")[0, 0].long()
    return image, mask


def load_sen1floods11(
    root: str | Path,
    sensor: Sensor = "s1",
    bands: Sequence[int] | None = None,
    image_size: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
) -> dict[str, Sen1Floods11Split]:
    """geosane's train / select / test of the hand-labelled chips of ``sensor`` (``s1``: VV, VH;
    ``s2``: the 13 L1C bands), ``bands`` (indices into :data:`SEN1FLOODS11_BANDS`) kept, each split
    capped at ``max_samples`` chips (seed ``seed + split position``, the analysis capping rule)."""
    if sensor not in _FOLDER:
        raise DataError(f"data.sensor must be s1 or s2 for Sen1Floods11, got {sensor!r}")
    names = SEN1FLOODS11_BANDS[sensor]
    if bands is not None:
        bad = [b for b in bands if not 0 <= b < len(names)]
        if bad:
            raise DataError(
                f"data.bands {bad} out of range for Sen1Floods11 {sensor} ({len(names)} bands: {', '.join(names)})"
            )
    root = Path(root).expanduser()
    out: dict[str, Sen1Floods11Split] = {}
    for position, split in enumerate(SPLITS):
        chips = _split_chips(root, split)
        keep = cap_samples(np.arange(len(chips)), max_samples, seed + position)
        images, masks = [], []
        for index in (int(i) for i in keep):
            chip = chips[index]
            pixels = _read_tif(root / HAND_LABELED / _FOLDER[sensor] / f"{chip}_{_FOLDER[sensor]}.tif")
            if pixels.shape[0] != len(names):
                raise DataError(
                    f"Sen1Floods11 chip {chip}: {pixels.shape[0]} bands in {_FOLDER[sensor]}, expected {len(names)} "
                    f"({', '.join(names)})"
                )
            label = _read_tif(root / HAND_LABELED / "LabelHand" / f"{chip}_LabelHand.tif")[0]
            if label.shape != pixels.shape[1:]:
                raise DataError(
                    f"Sen1Floods11 chip {chip}: label {label.shape} and image {pixels.shape[1:]} differ"
                )
            image = torch.from_numpy(np.nan_to_num(pixels.astype(np.float32), nan=0.0))
            if bands is not None:
                image = image[list(bands)]
            mask = torch.from_numpy(label.astype(np.int64))
            mask = torch.where((mask < 0) | (mask > 1), IGNORE_INDEX, mask)  # -1: no data
            image, mask = _resize(image, mask, image_size)
            images.append(image)
            masks.append(mask)
        out[split] = Sen1Floods11Split(torch.stack(images), torch.stack(masks), tuple(chips[i] for i in keep))
    return out
