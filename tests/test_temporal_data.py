"""Temporal stacks [N, T, C, H, W] in the data layer, PASTIS through TorchGeo and Sen1Floods11 from its
published layout (fake on-disk layouts written here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geosane.analysis import ProbeConfig, load_analysis_data
from geosane.config import load_config
from geosane.data import Normalization, TaskPart, cap_samples
from geosane.data.sen1floods11 import load_sen1floods11
from geosane.data.torchgeo import TORCHGEO_DATASETS, pick_time_steps
from geosane.downstream import DataConfig, load_task_data
from geosane.errors import DataError
from tests.temporal_fakes import write_fake_pastis, write_fake_sen1floods11

R18 = {"source": "timm:resnet18", "random_init": True}


def _data(**data: object) -> object:
    return load_config(ProbeConfig, None, {"task": "segmentation", "data": data, "models": [R18]}).data


@pytest.fixture
def fake_pastis(tmp_path: Path) -> Path:
    pytest.importorskip("torchgeo")
    return write_fake_pastis(tmp_path / "pastis")


def test_normalization_is_per_band_over_every_time_step() -> None:
    generator = torch.Generator().manual_seed(0)
    stacks = torch.rand(4, 3, 2, 8, 8, generator=generator) * torch.tensor([1.0, 50.0]).view(1, 1, 2, 1, 1)
    norm = Normalization.from_images(stacks)
    assert norm == Normalization.from_images(stacks.flatten(0, 1))  # T pooled like more images
    out = norm(stacks)
    assert out.shape == stacks.shape
    assert torch.allclose(out.transpose(0, 2).reshape(2, -1).mean(dim=1), torch.zeros(2), atol=1e-5)
    one = norm(stacks[0])  # a single stack [T, C, H, W] (the per-sample dataset path): bands, not frames
    assert torch.allclose(one, out[0])


def test_caps_and_subsets_index_stacks_by_sample() -> None:
    part = TaskPart(torch.arange(10 * 2 * 3 * 4 * 4).view(10, 2, 3, 4, 4).float(), torch.arange(10))
    keep = cap_samples(np.arange(10), 4, seed=0)
    sub = part.subset(keep)
    assert len(sub) == 4 and sub.images.shape == (4, 2, 3, 4, 4)
    assert torch.equal(sub.images[:, 0, 0, 0, 0], part.images[torch.as_tensor(keep), 0, 0, 0, 0])


def test_time_steps_are_evenly_spaced_and_checked() -> None:
    assert pick_time_steps(7, 4) == [0, 2, 4, 6]
    assert pick_time_steps(5, 2) == [0, 4]
    assert pick_time_steps(5, 1) == [2]
    with pytest.raises(DataError, match=r"data.time_steps: item 3 has 5 time steps, fewer than the 6"):
        pick_time_steps(5, 6, "item 3")


def test_pastis_reads_folds_as_splits_with_equal_length_stacks(fake_pastis: Path) -> None:
    assert TORCHGEO_DATASETS["pastis"].class_name == "PASTIS"
    data = load_analysis_data(
        _data(kind="torchgeo", dataset="pastis", root=str(fake_pastis), image_size=32, time_steps=4), "any"
    )
    assert data.task == "segmentation"
    assert {n: len(p) for n, p in data.splits.items()} == {
        "train": 12,
        "select": 4,
        "test": 4,
    }  # folds 1-3 / 4 / 5
    assert tuple(data.splits["train"].images.shape) == (12, 4, 10, 32, 32)
    assert data.time_steps == 4 and data.num_bands == 10
    assert len(data.class_names) == 19 and "void_label" not in data.class_names
    masks = data.splits["train"].targets
    assert set(masks.unique().tolist()) == set(range(19)) | {255}  # void -> ignore
    assert (masks[:, -1] == 255).all()
    # the first training patch (fold 1, id 10000, 7 frames): frames 0, 2, 4, 6 of the file, unscaled
    series = np.load(fake_pastis / "PASTIS-R" / "DATA_S2" / "S2_10000.npy")
    assert series.shape[0] == 7
    expected = torch.from_numpy(series[[0, 2, 4, 6]].astype(np.float32))
    assert torch.equal(data.splits["train"].images[0], expected)
    # bands select on the band axis of the stacks; another time_steps is another cache key
    rgb = load_analysis_data(
        _data(
            kind="torchgeo",
            dataset="pastis",
            root=str(fake_pastis),
            image_size=32,
            time_steps=4,
            bands=[2, 1, 0],
        ),
        "segmentation",
    )
    assert torch.equal(rgb.splits["train"].images, data.splits["train"].images[:, :, [2, 1, 0]])
    three = load_analysis_data(
        _data(
            kind="torchgeo",
            dataset="pastis",
            root=str(fake_pastis),
            image_size=16,
            time_steps=3,
            max_samples=5,
        ),
        "segmentation",
    )
    assert tuple(three.splits["train"].images.shape) == (5, 3, 10, 16, 16) and three.key != data.key


def test_pastis_refuses_missing_or_too_many_time_steps(fake_pastis: Path) -> None:
    with pytest.raises(DataError, match=r"varying length: set data.time_steps"):
        load_analysis_data(_data(kind="torchgeo", dataset="pastis", root=str(fake_pastis)), "segmentation")
    with pytest.raises(DataError, match=r"data.time_steps: item .* has 5 time steps, fewer than the 6"):
        load_analysis_data(
            _data(kind="torchgeo", dataset="pastis", root=str(fake_pastis), time_steps=6), "segmentation"
        )
    with pytest.raises(DataError, match=r"data.time_steps applies to TorchGeo time series"):
        load_analysis_data(_data(kind="csmask", root=str(fake_pastis), time_steps=2), "segmentation")


def test_sen1floods11_reads_the_release_layout(tmp_path: Path) -> None:
    root = write_fake_sen1floods11(tmp_path / "v1.1")
    parts = load_sen1floods11(root)
    assert {n: len(p.chips) for n, p in parts.items()} == {"train": 6, "select": 3, "test": 3}
    assert parts["train"].chips[:2] == ("Ghana_100000", "India_100001")  # the CSV's order
    assert parts["select"].chips[0] == "Ghana_100006"  # flood_valid_data.csv is select
    train = parts["train"]
    assert tuple(train.images.shape) == (6, 2, 32, 32) and train.images.dtype == torch.float32
    assert not train.images.isnan().any() and train.images[0, 0, 3, 3] == 0  # NaN radar -> 0
    assert (
        set(train.masks.unique().tolist()) == {0, 1, 255} and (train.masks[:, 0] == 255).all()
    )  # -1 -> ignore
    # water is dark in VV
    vv, masks = train.images[:, 0], train.masks
    assert vv[masks == 1].mean() < vv[masks == 0].mean() - 5
    s2 = load_sen1floods11(root, sensor="s2", bands=[3, 2, 1], image_size=16, max_samples=4)
    assert tuple(s2["train"].images.shape) == (4, 3, 16, 16) and len(s2["test"].chips) == 3
    spec = _data(kind="sen1floods11", root=str(root), image_size=16, sensor="s2", bands=[3, 2, 1])
    data = load_analysis_data(spec, "segmentation")
    assert data.class_names == ("land", "water") and data.num_bands == 3
    assert (
        data.key != load_analysis_data(_data(kind="sen1floods11", root=str(root), image_size=16), "any").key
    )


def test_sen1floods11_bad_input(tmp_path: Path) -> None:
    root = write_fake_sen1floods11(tmp_path / "v1.1")
    with pytest.raises(
        DataError, match=r"data.bands \[2\] out of range for Sen1Floods11 s1 \(2 bands: VV, VH\)"
    ):
        load_sen1floods11(root, bands=[2])
    with pytest.raises(
        DataError, match=r"split file .*flood_train_data.csv not found; data.root must be the release"
    ):
        load_sen1floods11(tmp_path)
    (root / "splits" / "flood_handlabeled" / "flood_test_data.csv").write_text("Ghana_1_S2Hand.tif,x\n")
    with pytest.raises(DataError, match=r"flood_test_data.csv:1: expected '<chip>_S1Hand.tif"):
        load_sen1floods11(root)
    with pytest.raises(DataError, match=r"Sen1Floods11 is a segmentation dataset"):
        load_analysis_data(_data(kind="sen1floods11", root=str(root)), "classification")


def test_finetuning_refuses_a_time_series_dataset(fake_pastis: Path) -> None:
    with pytest.raises(DataError, match=r"PASTIS holds time series \[T, C, H, W\] of varying length"):
        load_task_data(DataConfig(kind="torchgeo", dataset="pastis", root=fake_pastis))
