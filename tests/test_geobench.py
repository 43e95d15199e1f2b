"""GEO-Bench tasks on fake layouts written exactly as geobench writes them (HDF5 bands, a metadata
pickle naming geobench's classes), read without geobench; a hostile pickle runs nothing."""

from __future__ import annotations

import json
import os
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from geosane.data.geobench import PickledRecord, find_geobench_task, open_geobench, read_sample_attributes
from geosane.downstream.config import DataConfig
from geosane.downstream.data import load_task_data
from geosane.errors import ConfigError, DataError

h5py = pytest.importorskip("h5py")

BANDS = ("01 - Coastal aerosol", "02 - Blue", "03 - Green", "04 - Red")


@pytest.fixture
def geobench_module() -> Iterator[types.ModuleType]:
    """A stand-in ``geobench.dataset`` module so that pickles name geobench's classes, as real files do."""

    module = types.ModuleType("geobench.dataset")

    class SpectralBand:  # geobench's band description: name, alias, wavelength
        def __init__(self, name: str, wavelength: float) -> None:
            self.name = name
            self.wavelength = wavelength

    SpectralBand.__module__ = "geobench.dataset"
    SpectralBand.__qualname__ = "SpectralBand"
    module.SpectralBand = SpectralBand  # type: ignore[attr-defined]
    package = types.ModuleType("geobench")
    package.dataset = module  # type: ignore[attr-defined]
    sys.modules["geobench"], sys.modules["geobench.dataset"] = package, module
    yield module
    del sys.modules["geobench"], sys.modules["geobench.dataset"]


def _write_sample(path: Path, bands: np.ndarray, label: object, segmentation: bool, module: types.ModuleType) -> None:
    attrs: dict[str, object] = {"bands_order": list(BANDS)}
    with h5py.File(path, "w") as fp:
        for name, band in zip(BANDS, bands, strict=True):
            fp.create_dataset(name, data=band)
            attrs[name] = {"band_info": module.SpectralBand(name, 0.5), "date": None, "spatial_resolution": 10.0}
        if segmentation:
            fp.create_dataset("label", data=np.asarray(label, dtype=np.uint8))
            attrs["bands_order"] = [*BANDS, "label"]
        else:
            attrs["label"] = label
        fp.attrs["pickle"] = str(pickle.dumps(attrs))


def _write_task(root: Path, name: str, module: types.ModuleType, segmentation: bool = False) -> Path:
    folder = root / ("segmentation_v1.0" if segmentation else "classification_v1.0") / name
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    partition: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for split, count in (("train", 9), ("valid", 3), ("test", 3)):
        for i in range(count):
            sample = f"{split}_{i}"
            label: object = np.where(rng.random((16, 16)) > 0.5, 1, 0) if segmentation else i % 3
            bands = rng.integers(0, 3000, size=(len(BANDS), 16, 16)).astype(np.uint16)
            _write_sample(folder / f"{sample}.hdf5", bands, label, segmentation, module)
            partition[split].append(sample)
    (folder / "default_partition.json").write_text(json.dumps(partition))
    return folder


def test_classification_task_reads_bands_labels_and_partition(geobench_module: types.ModuleType, tmp_path: Path) -> None:
    folder = _write_task(tmp_path, "m-eurosat", geobench_module)
    assert find_geobench_task(tmp_path, "m-eurosat") == folder
    train = open_geobench("m-eurosat", tmp_path, "train")
    sample = train[0]
    assert sample["image"].shape == (4, 16, 16) and sample["image"].dtype == torch.float32
    with h5py.File(folder / "train_0.hdf5") as fp:
        assert torch.equal(sample["image"][3], torch.from_numpy(np.asarray(fp["04 - Red"], dtype=np.float32)))
    assert int(sample["label"]) == 0 and train.classes == ("0", "1", "2")
    attrs = read_sample_attributes(folder / "train_0.hdf5")
    record = attrs["01 - Coastal aerosol"]["band_info"]
    assert isinstance(record, PickledRecord) and record.get("name") == "01 - Coastal aerosol"
    data = load_task_data(DataConfig(kind="geobench", dataset="m-eurosat", root=tmp_path, image_size=32))
    assert data.task == "classification" and data.in_chans == 4 and data.sizes() == {"train": 9, "select": 3, "test": 3}
    image, label = data.train[0]  # type: ignore[index]
    assert image.shape == (4, 32, 32) and torch.isfinite(image).all() and int(label) == 0


def test_segmentation_task_and_finetune(geobench_module: types.ModuleType, tmp_path: Path) -> None:
    from geosane.downstream import finetune, load_finetune_config

    _write_task(tmp_path, "m-cashew-plantation", geobench_module, segmentation=True)
    overrides = [
        "init=scratch", "arch.name=test_resnet", "data.kind=geobench", "data.dataset=m-cashew-plantation",
        f"data.root={tmp_path}", "data.image_size=32", "task.kind=auto", "train.epochs=1", "train.batch_size=4",
        f"out={tmp_path / 'run'}",
    ]  # fmt: skip
    result = finetune(load_finetune_config("csmask", overrides), show_progress=False)
    assert result.metric == "miou" and 0.0 <= result.test <= 1.0


def test_missing_task_and_hostile_pickle_fail_clearly(geobench_module: types.ModuleType, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="GEO-Bench task 'm-eurosat' not found under"):
        open_geobench("m-eurosat", tmp_path, "train")
    with pytest.raises(ConfigError, match=r"data\.kind=geobench needs data\.dataset"):
        load_task_data(DataConfig(kind="geobench", root=tmp_path))
    folder = _write_task(tmp_path, "m-eurosat", geobench_module)
    marker = tmp_path / "pwned"

    class Hostile:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return os.system, (f"touch {marker}",)

    with h5py.File(folder / "train_0.hdf5", "a") as fp:
        fp.attrs["pickle"] = str(pickle.dumps({"label": Hostile()}))
    with pytest.raises(DataError, match=r"names (posix|os|nt)\.system, which geosane does not load"):
        open_geobench("m-eurosat", tmp_path, "train")[0]
    assert not marker.exists()
    (folder / "test_2.hdf5").unlink()
    with pytest.raises(DataError, match=r"sample file test_2\.hdf5 listed in default_partition\.json is missing"):
        open_geobench("m-eurosat", tmp_path, "test")[2]
