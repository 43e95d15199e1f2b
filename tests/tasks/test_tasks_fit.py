from __future__ import annotations

import torch

from geosane.data import Normalization, TensorImageDataset
from geosane.tasks import FitConfig, build_classifier, build_segmenter, evaluate, fit
from geosane.zoo import ArchSpec


def _colour_data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is the dominant channel: learnable in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    images = torch.randint(0, 80, (n, 3, 32, 32), generator=g, dtype=torch.uint8)
    images[torch.arange(n), labels] += 150
    return images, labels


def test_fit_learns_and_records_history() -> None:
    norm = Normalization.imagenet()
    train = TensorImageDataset(*_colour_data(96, 0), norm, augment=True)
    val = TensorImageDataset(*_colour_data(48, 1), norm)
    model = build_classifier(ArchSpec("timm", "resnet10t", {}), num_classes=3)
    before = evaluate(model, "classification", 3, val)["accuracy"]
    result = fit(model, "classification", 3, train, val, FitConfig(epochs=3, batch_size=16, lr=3e-3))
    assert [row["epoch"] for row in result.history] == [1.0, 2.0, 3.0]
    assert all({"train_loss", "lr", "val_accuracy"} <= row.keys() for row in result.history)
    after = evaluate(model, "classification", 3, val)["accuracy"]
    assert after >= 0.9, f"accuracy {before:.2f} -> {after:.2f}"
    assert result.final["accuracy"] == after


def test_frozen_backbone_only_trains_head() -> None:
    norm = Normalization.imagenet()
    train = TensorImageDataset(*_colour_data(32, 0), norm)
    model = build_classifier(ArchSpec("timm", "resnet10t", {}), num_classes=3)
    stem = model.conv1[0].weight.detach().clone()
    bn_mean = model.bn1.running_mean.clone()
    head = model.fc.weight.detach().clone()
    fit(model, "classification", 3, train, None, FitConfig(epochs=1, batch_size=16, freeze_backbone=True))
    assert torch.equal(model.conv1[0].weight, stem) and torch.equal(model.bn1.running_mean, bn_mean)
    assert not torch.equal(model.fc.weight, head)


def test_segmentation_fit_ignores_ignore_index() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(16, 3, 32, 32, generator=g)
    masks = (images[:, 0] > 0.5).long()
    masks[:, :4] = 255  # unlabelled border must not count
    ds = TensorImageDataset(images, masks, Normalization((0.5,) * 3, (0.25,) * 3))
    model = build_segmenter(
        ArchSpec("timm", "resnet10t", {}), num_classes=2, decoder="unet", decoder_channels=8
    )
    result = fit(model, "segmentation", 2, ds, ds, FitConfig(epochs=2, batch_size=8, lr=3e-3))
    assert 0.0 <= result.final["miou"] <= 1.0
