from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geosane.data import (
    CSMASK_CLASSES,
    IGNORE_INDEX,
    Normalization,
    TensorImageDataset,
    load_csmask,
    load_image_folder,
    stratified_split,
)
from geosane.errors import DataError


def test_image_folder_loads_classes_and_images(tiny_image_folder: Path) -> None:
    data = load_image_folder(tiny_image_folder, image_size=16)
    assert data.classes == ("alpha", "beta", "gamma")
    assert data.images.shape == (24, 3, 16, 16) and data.images.dtype == torch.uint8
    assert torch.bincount(data.labels).tolist() == [8, 8, 8]
    # class colour survives decoding: alpha is red-dominant
    assert data.images[data.labels == 0, 0].float().mean() > data.images[data.labels == 0, 1].float().mean()
    sub = data.select_classes(["gamma", "alpha"]).select_bands([2])
    assert sub.classes == ("gamma", "alpha") and sub.images.shape == (16, 1, 16, 16)
    assert sorted(set(sub.labels.tolist())) == [0, 1]


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="image folder not found"):
        load_image_folder(tmp_path / "nope")
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    with pytest.raises(DataError, match="holds no images"):
        load_image_folder(tmp_path / "empty")


def test_stratified_split_is_deterministic_disjoint_and_stratified() -> None:
    labels = np.repeat(np.arange(7), 300)
    a = stratified_split(labels, seed=3)
    b = stratified_split(labels, seed=3)
    c = stratified_split(labels, seed=4)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert not np.array_equal(a["train"], c["train"])
    all_idx = np.concatenate(list(a.values()))
    assert np.array_equal(np.sort(all_idx), np.arange(labels.size))
    assert np.bincount(labels[a["train"]]).tolist() == [180] * 7
    assert np.bincount(labels[a["select"]]).tolist() == [30] * 7
    with pytest.raises(DataError, match="class 1 has only 2 samples"):
        stratified_split(np.array([0] * 20 + [1] * 2), seed=0)


def test_dataset_augmentation_keeps_masks_aligned() -> None:
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    masks = images[:, 0].long()
    ds = TensorImageDataset(images, masks, Normalization((0.0,), (1.0,)), augment=True)
    for i in range(20):
        x, y = ds[i % 2]
        assert torch.equal(x[0].long(), y)


def test_rsscn7_loads(rsscn7_root: Path) -> None:
    data = load_image_folder(rsscn7_root, image_size=32)
    assert len(data.classes) == 7 and len(data) == 2100


def test_csmask_chips(csmask_root: Path) -> None:
    chips = load_csmask(csmask_root, chip_size=128)
    assert chips.images.shape == (32, 6, 128, 128)
    assert chips.classes == CSMASK_CLASSES
    values = set(torch.unique(chips.masks).tolist())
    assert values <= {0, 1, 2, IGNORE_INDEX} and {0, 1, 2} <= values
    assert len(chips.scene_indices(["sentinel2"])) == 16
