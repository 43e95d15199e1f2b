from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from geosane.analysis import ProbeConfig, fit_probe, run_probe, score_readout
from geosane.config import load_config

from .conftest import tiny_vit_spec


def _label_features(
    n: int, dim: int, classes: int, carries_label: bool, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    x = torch.randn(n, dim, generator=g)
    if carries_label:
        x[:, :classes] += 4.0 * F.one_hot(labels, classes)
    return x, labels


@pytest.mark.parametrize("method", ["ridge", "logistic", "linear"])
def test_each_probe_reads_a_label_carrying_representation_and_not_noise(method: str) -> None:
    classes = 5
    for carries, check in ((True, lambda acc: acc > 0.9), (False, lambda acc: acc < 0.35)):
        train = _label_features(300, 48, classes, carries, 0)
        select = _label_features(100, 48, classes, carries, 1)
        test_x, test_y = _label_features(400, 48, classes, carries, 2)
        fit = fit_probe(method, "classification", train, select, classes, seed=0)
        accuracy = score_readout(fit.readout, "classification", test_x, test_y, classes)
        assert check(accuracy), f"{method}, label present={carries}: accuracy {accuracy:.3f}"


def test_regression_and_segmentation_probes() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(300, 16, generator=g)
    y = 3 * x[:, 0] - x[:, 1] + 0.05 * torch.randn(300, generator=g)
    for method in ("ridge", "linear"):
        fit = fit_probe(method, "regression", (x[:200], y[:200]), (x[200:250], y[200:250]), 0)
        assert score_readout(fit.readout, "regression", x[250:], y[250:], 0) > 0.95
    # segmentation: the class of each pixel is the sign of channel 0 of the (upsampled) map
    maps = torch.randn(30, 8, 4, 4, generator=g)
    masks = (F.interpolate(maps[:, :1], size=(16, 16), mode="bilinear", align_corners=False)[:, 0] > 0).long()
    masks[:, 0] = 255  # ignored row
    for method in ("ridge", "logistic", "linear"):
        fit = fit_probe(
            method, "segmentation", (maps[:20], masks[:20]), (maps[20:25], masks[20:25]), 2, seed=0
        )
        miou = score_readout(fit.readout, "segmentation", maps[25:], masks[25:], 2)
        assert miou > 0.85, f"{method}: mIoU {miou:.3f}"


def _config(root: Path, out: Path, **extra: object) -> ProbeConfig:
    data = {"root": str(root), "image_size": 32, "split": {"train": 0.5, "select": 0.2, "test": 0.3}}
    return load_config(
        ProbeConfig,
        None,
        {
            "data": data,
            "models": [{"source": "timm:resnet10t", "random_init": True, "name": "resnet10t"}],
            "probe": {"methods": ["ridge"], "fractions": [1.0], "seeds": [0]},
            "output_dir": str(out),
            "progress": False,
            **extra,
        },
    )


def test_probe_on_a_real_network_finds_the_label_when_images_carry_it(
    colour_folder: Path, noise_folder: Path, tmp_path: Path
) -> None:
    """Random-init ResNet and ViT blocks pass the class colour through (high accuracy) but nothing
    on images unrelated to their class (chance, 1/3)."""
    models = [
        {"source": "timm:resnet10t", "random_init": True, "name": "resnet10t", "layers": ["layer1"]},
        tiny_vit_spec(name="vit", layers=["blocks.0"]),
    ]
    colour = run_probe(_config(colour_folder, tmp_path / "probe-colour", models=models))
    noise = run_probe(_config(noise_folder, tmp_path / "probe-noise", models=models))
    assert {r["model"] for r in colour.rows} == {"resnet10t", "vit"}
    assert all(r["test"] >= 0.9 for r in colour.rows), colour.rows
    assert all(r["test"] <= 0.6 for r in noise.rows), noise.rows
    assert sum(r["test"] for r in noise.rows) / len(noise.rows) < 0.5
