from __future__ import annotations

import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from geosane.downstream import DataConfig, load_task_data
from geosane.errors import DataError

from .downstream_fakes import EUROSAT_CLASSES, write_fake_eurosat100

# rasterio (inside TorchGeo readers) warns about its own Affine `*` operator
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


def _folder(tmp_path: Path, name: str, classes: dict[str, int], size: int = 16) -> Path:
    from PIL import Image

    rng = np.random.default_rng(len(name))
    root = tmp_path / name
    for cls, count in classes.items():
        (root / cls).mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
                root / cls / f"{i}.png"
            )
    return root


def test_folder_splits_are_seeded_stratified_and_disjoint(rsscn7_root: Path) -> None:
    config = DataConfig(root=rsscn7_root, image_size=16)
    data = load_task_data(config)
    assert data.task == "classification" and data.num_classes == 7 and data.in_chans == 3
    assert data.sizes() == {"train": 1260, "select": 210, "test": 630}
    again = load_task_data(config)
    assert torch.equal(data.test.images, again.test.images)  # type: ignore[attr-defined]
    for split in ("train", "select", "test"):
        counts = torch.bincount(getattr(data, split).targets, minlength=7)
        assert counts.min() == counts.max()  # 300 per class split 180/30/90
    other = load_task_data(DataConfig(root=rsscn7_root, image_size=16, split_seed=1))
    assert not torch.equal(data.test.images, other.test.images)  # type: ignore[attr-defined]
    few = load_task_data(
        DataConfig(root=rsscn7_root, image_size=16, train_per_class=5, max_samples={"test": 70})
    )
    assert few.sizes() == {"train": 35, "select": 210, "test": 70}
    capped = load_task_data(DataConfig(root=rsscn7_root, image_size=16, max_samples={"train": 100}))
    assert capped.sizes() == {"train": 100, "select": 210, "test": 630}  # every split can be capped
    assert torch.bincount(few.train.targets).tolist() == [5] * 7  # type: ignore[attr-defined]
    # the capped training images are a subset of the full training split
    full = {tuple(x.flatten()[:32].tolist()) for x in data.train.images}  # type: ignore[attr-defined]
    assert all(tuple(x.flatten()[:32].tolist()) in full for x in few.train.images)  # type: ignore[attr-defined]


def test_separate_test_and_selection_folders(tmp_path: Path) -> None:
    train = _folder(tmp_path, "train", {"a": 10, "b": 10})
    test = _folder(tmp_path, "test", {"a": 3, "b": 4})
    select = _folder(tmp_path, "select", {"a": 1, "b": 2})
    data = load_task_data(DataConfig(root=train, test_data=test, select_data=select, image_size=16))
    assert data.sizes() == {"train": 20, "select": 3, "test": 7}
    only_test = load_task_data(DataConfig(root=train, test_data=test, image_size=16))
    assert only_test.sizes()["test"] == 7 and only_test.sizes()["train"] + only_test.sizes()["select"] == 20


def test_class_folders_that_differ_between_train_and_test_are_refused(tmp_path: Path) -> None:
    train = _folder(tmp_path, "train", {"a": 6, "b": 6})
    test = _folder(tmp_path, "test", {"a": 2, "c": 2})
    with pytest.raises(
        DataError, match=r"class folders differ .* missing from test \['b'\], not in training \['c'\]"
    ):
        load_task_data(DataConfig(root=train, test_data=test, image_size=16))


def test_selection_folder_with_fewer_images_than_classes_is_refused(tmp_path: Path) -> None:
    train = _folder(tmp_path, "train", {"a": 6, "b": 6, "c": 6})
    select = _folder(tmp_path, "select", {"a": 1, "b": 1})
    (select / "c").mkdir()
    with pytest.raises(DataError, match=r"has 2 image.* for 3 classes"):
        load_task_data(DataConfig(root=train, select_data=select, image_size=16))


def test_csmask_keeps_the_test_scene_apart_and_blocks_within_splits(csmask_root: Path) -> None:
    config = DataConfig(
        kind="csmask",
        root=csmask_root,
        chip_size=64,
        group_by="block",
        block_size=128,
        test_scenes=["landsat7"],
    )
    data = load_task_data(config)
    assert data.task == "segmentation" and data.in_chans == 6 and data.classes == ("clear", "cloud", "shadow")
    assert data.info["scenes"] == {"train": ["sentinel2"], "select": ["sentinel2"], "test": ["landsat7"]}
    assert data.sizes()["test"] == 64 and data.sizes()["train"] + data.sizes()["select"] == 64
    # the same split whatever the seed of training; block groups never straddle splits
    from geosane.data import load_csmask

    chips = load_csmask(csmask_root, 64)
    pool = chips.subset(chips.scene_indices(["sentinel2"]))
    groups = np.asarray(pool.block_groups(128))
    train_images = {x.numpy().tobytes() for x in data.train.images}  # type: ignore[attr-defined]
    in_train = np.array([x.numpy().tobytes() in train_images for x in pool.images])
    for g in np.unique(groups):
        assert in_train[groups == g].all() or not in_train[groups == g].any()
    with pytest.raises(DataError, match=r"try data\.group_by=block"):
        load_task_data(DataConfig(kind="csmask", root=csmask_root, test_scenes=["landsat7"]))


def test_torchgeo_eurosat_from_its_on_disk_layout(fake_eurosat: Path) -> None:
    config = DataConfig(kind="torchgeo", dataset="EuroSAT100", root=fake_eurosat, image_size=32)
    data = load_task_data(config)
    assert data.task == "classification" and data.classes == EUROSAT_CLASSES and data.in_chans == 13
    assert data.sizes() == {"train": 12, "select": 6, "test": 6}
    image, label = data.train[0]
    assert image.shape == (13, 32, 32) and label.ndim == 0
    stacked = torch.stack([data.train[i][0] for i in range(12)])
    assert abs(stacked.mean().item()) < 0.5  # normalised with training statistics
    rgb = load_task_data(
        DataConfig(
            kind="torchgeo",
            dataset="eurosat100",
            root=fake_eurosat,
            dataset_kwargs={"bands": ["B04", "B03", "B02"]},
        )
    )
    assert rgb.in_chans == 3


def test_torchgeo_download_is_used_when_data_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eurosat = pytest.importorskip("torchgeo.datasets.eurosat")

    source = write_fake_eurosat100(tmp_path / "mirror")
    calls: list[str] = []

    def fake_download_url(url: str, root: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        name = url.rsplit("/", 1)[-1]
        shutil.copy(source / name, Path(root) / name)

    def fake_download_and_extract(url: str, root: str, *args: object, **kwargs: object) -> None:
        calls.append(url)
        shutil.copytree(source / "ds", Path(root) / "ds", dirs_exist_ok=True)

    monkeypatch.setattr(eurosat, "download_url", fake_download_url)
    monkeypatch.setattr(eurosat, "download_and_extract_archive", fake_download_and_extract)
    root = tmp_path / "download"
    root.mkdir()
    data = load_task_data(
        DataConfig(kind="torchgeo", dataset="EuroSAT100", root=root, download=True, image_size=16)
    )
    assert data.sizes() == {"train": 12, "select": 6, "test": 6}
    assert any(url.endswith("EuroSAT100.zip") for url in calls) and any(
        "eurosat-100-test" in url for url in calls
    )


def test_torchgeo_offline_and_absent_data_say_what_to_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    eurosat = pytest.importorskip("torchgeo.datasets.eurosat")

    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(DataError, match=r"EuroSAT100 not found under .*data.download=true.*data.root=DIR"):
        load_task_data(DataConfig(kind="torchgeo", dataset="EuroSAT100", root=empty))

    def offline(url: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(eurosat, "download_url", offline)
    with pytest.raises(DataError, match=r"could not download EuroSAT100 .*offline\?.*data.root=DIR"):
        load_task_data(DataConfig(kind="torchgeo", dataset="EuroSAT100", root=empty, download=True))
    with pytest.raises(DataError, match="Sen1Floods11 is not part of TorchGeo"):
        load_task_data(DataConfig(kind="torchgeo", dataset="Sen1Floods11", root=empty))
    with pytest.raises(DataError, match="unknown TorchGeo dataset 'NoSuchSet'"):
        load_task_data(DataConfig(kind="torchgeo", dataset="NoSuchSet", root=empty))


def test_torchgeo_bigearthnet_is_multilabel(fake_bigearthnet: Path) -> None:
    data = load_task_data(
        DataConfig(kind="torchgeo", dataset="bigearthnet", root=fake_bigearthnet, image_size=32)
    )
    assert data.task == "multilabel" and data.num_classes == 19 and data.in_chans == 12
    image, target = data.train[1]
    assert image.shape == (12, 32, 32) and target.shape == (19,) and target.sum() >= 1
