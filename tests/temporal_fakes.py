"""On-disk layouts of PASTIS (as TorchGeo's ``PASTIS`` reads it) and Sen1Floods11 v1.1 (as published),
small and random, with a learnable signal, for the data and analysis tests."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

PASTIS_BANDS = 10


def write_fake_pastis(
    root: Path, per_fold: int = 4, lengths: tuple[int, ...] = (5, 7, 6), size: int = 32, seed: int = 0
) -> Path:
    """``root/PASTIS-R/{metadata.geojson, DATA_S2/S2_<id>.npy, ANNOTATIONS/TARGET_<id>.npy}``.

    Patches of folds 1-5 (``per_fold`` each) hold Sentinel-2 series ``[T, 10, size, size]`` whose T
    cycles through ``lengths`` (PASTIS' series differ in length), and semantic targets ``[3, size,
    size]`` (TorchGeo reads the first plane): a grid of 8x8 cells of the 19 classes (every class in
    every fold), each class brightening band ``class % 10`` in the later half of the series (a
    temporal signal), and 19 (void) in the bottom row.
    """
    rng = np.random.default_rng(seed)
    base = root / "PASTIS-R"
    (base / "DATA_S2").mkdir(parents=True)
    (base / "ANNOTATIONS").mkdir()
    features = []
    patch = 10000
    cells = size // 8
    for fold in range(1, 6):
        for _ in range(per_fold):
            frames = lengths[patch % len(lengths)]
            series = rng.integers(0, 2000, size=(frames, PASTIS_BANDS, size, size)).astype(np.int16)
            target = np.zeros((3, size, size), dtype=np.uint8)
            for cell in range(cells * cells):
                cls = (patch * 5 + cell) % 19
                rows, cols = (
                    slice(8 * (cell // cells), 8 * (cell // cells) + 8),
                    slice(8 * (cell % cells), 8 * (cell % cells) + 8),
                )
                target[0, rows, cols] = cls
                series[frames // 2 :, cls % PASTIS_BANDS, rows, cols] += 1500 + 300 * (cls // PASTIS_BANDS)
            target[0, -1, :] = 19
            np.save(base / "DATA_S2" / f"S2_{patch}.npy", series)
            np.save(base / "ANNOTATIONS" / f"TARGET_{patch}.npy", target)
            features.append(
                {
                    "type": "Feature",
                    "properties": {"ID_PATCH": patch, "Fold": fold, "N_Parcel": 1},
                    "geometry": {"type": "Point", "coordinates": [2.0 + patch * 1e-4, 46.0]},
                }
            )
            patch += 1
    (base / "metadata.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return root


def write_fake_sen1floods11(
    root: Path, counts: tuple[int, int, int] = (6, 3, 3), size: int = 32, seed: int = 0
) -> Path:
    """``root/data/flood_events/HandLabeled/{S1Hand,S2Hand,LabelHand}/<Country>_<id>_*.tif`` and
    ``root/splits/flood_handlabeled/flood_{train,valid,test}_data.csv``: S1 chips (VV, VH in dB, a
    NaN pixel), S2 chips (13 bands) and labels (-1 no data in the first row, 1 water where VV is
    low, 0 land)."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    rng = np.random.default_rng(seed)
    hand = root / "data" / "flood_events" / "HandLabeled"
    for folder in ("S1Hand", "S2Hand", "LabelHand"):
        (hand / folder).mkdir(parents=True)
    splits = root / "splits" / "flood_handlabeled"
    splits.mkdir(parents=True)

    def write(path: Path, array: np.ndarray) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)  # chips without a CRS are fine here
            with rasterio.open(
                path, "w", driver="GTiff", height=size, width=size, count=array.shape[0], dtype=array.dtype
            ) as dst:
                dst.write(array)

    chip = 0
    for name, count in zip(("train", "valid", "test"), counts, strict=True):
        lines = []
        for _ in range(count):
            chip_id = f"{('Ghana', 'India', 'Spain')[chip % 3]}_{100000 + chip}"
            water = np.zeros((size, size), dtype=bool)
            water[: size // 2 + chip % 4, : size // 2] = True
            s1 = rng.normal(-10, 2, size=(2, size, size)).astype(np.float32)
            s1[:, water] -= 12  # open water is dark in radar
            s1[0, 3, 3] = np.nan
            s2 = rng.integers(0, 3000, size=(13, size, size)).astype(np.uint16)
            label = water.astype(np.int16)[None]
            label[0, 0, :] = -1
            write(hand / "S1Hand" / f"{chip_id}_S1Hand.tif", s1)
            write(hand / "S2Hand" / f"{chip_id}_S2Hand.tif", s2)
            write(hand / "LabelHand" / f"{chip_id}_LabelHand.tif", label)
            lines.append(f"{chip_id}_S1Hand.tif,{chip_id}_LabelHand.tif")
            chip += 1
        (splits / f"flood_{name}_data.csv").write_text("\n".join(lines) + "\n")
    return root
