"""Helpers for the downstream tests: fake TorchGeo on-disk layouts and a `geosane generate` directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from geosane.io import save_safetensors, write_json
from geosane.zoo import ArchSpec

EUROSAT_CLASSES = ("AnnualCrop", "Forest", "River")
EUROSAT_DIR = ("ds", "images", "remote_sensing", "otherDatasets", "sentinel_2", "tif")
ARCH = ArchSpec("timm", "test_resnet", {"num_classes": 7})


def write_tif(path: Path, array: np.ndarray) -> None:
    import rasterio
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    bands, height, width = array.shape
    profile = {"driver": "GTiff", "height": height, "width": width, "count": bands, "dtype": array.dtype.name}
    with rasterio.open(path, "w", transform=from_origin(0, height, 10, 10), **profile) as dst:
        dst.write(array)


def write_fake_eurosat100(root: Path, per_split: tuple[int, int, int] = (4, 2, 2)) -> Path:
    """The on-disk layout TorchGeo's EuroSAT100 expects, with 3 classes of 16x16 13-band tiles."""
    rng = np.random.default_rng(0)
    names: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for c, cls in enumerate(EUROSAT_CLASSES):
        i = 0
        for split, count in zip(("train", "val", "test"), per_split, strict=True):
            for _ in range(count):
                name = f"{cls}_{i}.tif"
                array = rng.integers(0, 500, size=(13, 16, 16)).astype(np.uint16)
                array[c * 4 : c * 4 + 4] += 3000  # class-specific bright bands
                write_tif(root.joinpath(*EUROSAT_DIR, cls, name), array)
                names[split].append(name.replace(".tif", ".jpg"))
                i += 1
    for split, files in names.items():
        (root / f"eurosat-100-{split}.txt").write_text("\n".join(files) + "\n")
    return root


def perturbed(state: dict[str, torch.Tensor], seed: int, scale: float) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: v + scale * torch.randn(v.shape, generator=g)
        if v.is_floating_point() and "running" not in k
        else v.clone()
        for k, v in state.items()
    }


def write_generated_dir(path: Path, num_candidates: int = 3, arch: ArchSpec = ARCH, prompt: str = "") -> Path:
    """A directory in the `geosane generate` output contract, candidates are real test_resnet weights."""
    import timm

    torch.manual_seed(1)
    state = timm.create_model(arch.name, **arch.kwargs).state_dict()
    candidates = []
    for rank in range(1, num_candidates + 1):
        file = f"candidate_{rank}.safetensors"
        save_safetensors(perturbed(state, 100 + rank, 0.01), path / file)
        candidates.append({"rank": rank, "file": file, "proxy_score": 0.9 - 0.1 * rank, "proxy": "knn"})
    write_json(
        path / "model_card.json",
        {
            "prompt": prompt,
            "arch": arch.to_dict(),
            "ae_checkpoint": "ae/autoencoder.safetensors",
            "seed": 0,
            "candidates": candidates,
            "generated_tensors": [k for k in state if k.endswith("weight")],
            "carried_tensors": [k for k in state if not k.endswith("weight")],
            "note": "test fixture: perturbed random weights, not real generated weights",
        },
    )
    return path


REPO_ROOT = Path(__file__).resolve().parents[2]
