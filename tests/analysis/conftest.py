"""Small real architectures (random init) for the analysis tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# A 2-block ViT with 8x8 patches on 32x32 images: every layer family the analysis needs, in ~0.5 MB.
TINY_VIT = {
    "library": "timm",
    "name": "vit_tiny_patch16_224",
    "kwargs": {"img_size": 32, "patch_size": 8, "depth": 2},
}


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """These tests run tiny models: one intra-op thread is faster on a shared 2-core machine."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def tiny_vit_spec(**extra: object) -> dict:
    return {"source": "timm:vit_tiny_patch16_224", "random_init": True, "arch": TINY_VIT, **extra}


def write_folder(root: Path, classes: int, per_class: int, colour_coded: bool, seed: int = 0) -> Path:
    """``root/<class>/<i>.png`` 32x32 RGB images: the class is the dominant channel (``colour_coded``)
    or the images are pure noise with no relation to their folder."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        for i in range(per_class):
            image = rng.integers(0, 90, size=(32, 32, 3), dtype=np.uint8)
            if colour_coded:
                image[..., c % 3] += 150
            Image.fromarray(image).save(root / f"class{c}" / f"{i:02d}.png")
    return root


@pytest.fixture
def colour_folder(tmp_path: Path) -> Path:
    """3 classes x 20 images whose class is the dominant colour channel (trivially learnable)."""
    return write_folder(tmp_path / "colour", 3, 20, colour_coded=True)


@pytest.fixture
def noise_folder(tmp_path: Path) -> Path:
    """3 classes x 20 images of noise unrelated to the class (nothing to learn)."""
    return write_folder(tmp_path / "noise", 3, 20, colour_coded=False)


def write_fake_landcoverai(root: Path, per_split: tuple[int, int, int] = (12, 4, 6), size: int = 32) -> Path:
    """The on-disk layout TorchGeo's ``LandCoverAI`` reads (``{train,val,test}.txt`` of ids,
    ``output/<id>.jpg`` RGB tiles and ``output/<id>_m.png`` masks of its 5 classes), with random
    tiles whose class 1 ('Building') is the bright top-left block of some of them."""
    rng = np.random.default_rng(0)
    (root / "output").mkdir(parents=True)
    for split, count in zip(("train", "val", "test"), per_split, strict=True):
        ids = []
        for i in range(count):
            id_ = f"M-33-20-D-c-4-2_{split}{i}"
            image = rng.integers(0, 120, size=(size, size, 3), dtype=np.uint8)
            mask = (
                rng.choice([0, 2, 3, 4], size=(size // 8, size // 8))
                .repeat(8, 0)
                .repeat(8, 1)
                .astype(np.uint8)
            )
            if i % 2 == 0:
                mask[: size // 2, : size // 2] = 1
                image[: size // 2, : size // 2] += 120
            Image.fromarray(image).save(root / "output" / f"{id_}.jpg", quality=95)
            Image.fromarray(mask).save(root / "output" / f"{id_}_m.png")
            ids.append(id_)
        (root / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root


@pytest.fixture
def fake_landcoverai(tmp_path: Path) -> Path:
    pytest.importorskip("torchgeo")
    return write_fake_landcoverai(tmp_path / "landcoverai")


@pytest.fixture
def torch_hub_checkpoints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub checkpoint cache under tmp, downloads off: where tests put weights files
    in their published layout for ``torchgeo:ENUM`` sources (nothing reaches the network)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    return checkpoints


def torchgeo_file(checkpoints: Path, enum: str) -> Path:
    """Where torch hub caches the file of TorchGeo weights ``enum`` (its URL's file name)."""
    from urllib.parse import urlparse

    from torchgeo.models import get_weight

    return checkpoints / Path(urlparse(get_weight(enum).url).path).name

