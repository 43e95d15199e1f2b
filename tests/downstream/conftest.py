"""Fixtures for the downstream tests: fake TorchGeo layouts, csmask crops, a tiny zoo, a generate dir."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from geosane.zoo import ArchSpec, LoadedModel, Zoo

from .downstream_fakes import ARCH, perturbed, write_fake_eurosat100, write_generated_dir, write_tif


@pytest.fixture
def fake_eurosat(tmp_path: Path) -> Path:
    pytest.importorskip("torchgeo")
    return write_fake_eurosat100(tmp_path / "eurosat100")


@pytest.fixture
def fake_bigearthnet(tmp_path: Path) -> Path:
    """TorchGeo's BigEarthNet (S2, v1.0) layout: split CSVs, per-patch band GeoTIFFs and label JSON."""
    pytest.importorskip("torchgeo")
    from torchgeo.datasets import BigEarthNet

    root = tmp_path / "bigearthnet"
    bands = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B11", "B12")
    names43 = BigEarthNet.class_sets[43]
    usable = [names43[i] for i in sorted(BigEarthNet.label_converter)]  # labels that map to the 19 classes
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 3), ("test", 3)):
        rows = []
        for i in range(count):
            patch = f"S2A_{split}_{i}"
            labels = [usable[(i + j) % 4] for j in range(1 + i % 2)]
            folder = root / "BigEarthNet-v1.0" / patch
            for b in bands:
                write_tif(
                    folder / f"{patch}_{b}.tif", rng.integers(0, 3000, size=(1, 8, 8)).astype(np.uint16)
                )
            (folder / f"{patch}_labels_metadata.json").write_text(json.dumps({"labels": labels}))
            rows.append(f"{patch},S1_{patch}")
        (root / f"bigearthnet-{split}.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def tiny_zoo(tiny_zoo_template: Path, tmp_path: Path) -> Path:
    """A zoo of test_resnet models: a base and three members whose metadata records init_from the base.

    A copy of one built zoo per session (tests may edit it); building it takes about a second.
    """
    return Path(shutil.copytree(tiny_zoo_template, tmp_path / "zoo"))


@pytest.fixture(scope="session")
def tiny_zoo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import timm

    torch.manual_seed(0)
    base = LoadedModel("timm:test_resnet", timm.create_model("test_resnet", num_classes=7).state_dict(), ARCH)
    zoo = Zoo.create(tmp_path_factory.mktemp("tiny-zoo") / "zoo")
    zoo.add(base, model_id="base", metadata={"accuracy": 0.5})
    for i in range(3):
        member = LoadedModel(f"member-{i}", perturbed(base.state_dict, i, 0.02), ARCH)
        zoo.add(member, model_id=f"member-{i}", metadata={"init_from": "base", "accuracy": 0.6})
    other_arch = ArchSpec("timm", "test_efficientnet", {})
    other = LoadedModel(
        "timm:test_efficientnet", timm.create_model("test_efficientnet").state_dict(), other_arch
    )
    zoo.add(other, model_id="other-arch")
    return zoo.path


@pytest.fixture
def generated_dir(tmp_path: Path) -> Path:
    return write_generated_dir(tmp_path / "generated", prompt="timm:test_resnet")


@pytest.fixture
def mini_csmask(tmp_path: Path, csmask_root: Path) -> Path:
    """Three 128x128 crops of the real csmask scenes; a stripe of unknown mask values (ignored)."""
    root = tmp_path / "mini_csmask"
    root.mkdir()
    crops = {"s2_a": ("sentinel2", 0, 0), "s2_b": ("sentinel2", 256, 256), "l7_a": ("landsat7", 128, 256)}
    for name, (scene, top, left) in crops.items():
        with np.load(csmask_root / f"{scene}.npz") as data:
            img = data["img"][top : top + 128, left : left + 128]
            msk = data["msk"][top : top + 128, left : left + 128].copy()
        msk[:, :12] = 9  # not a csmask class: mapped to ignore_index 255, never scored
        np.savez(root / f"{name}.npz", img=img, msk=msk)
    return root
