"""The task-data layer every stage shares: caps (one RNG rule), split sizes and fractions,
the normalisation choice, unit-range scaling and the in-memory ``TaskData``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geosane.data import (
    Normalization,
    TaskData,
    cap_per_class,
    cap_samples,
    choose_normalization,
    split_fractions,
    split_sizes,
    stratified_split,
    to_unit_range,
)
from geosane.errors import ConfigError

LABELS = np.array([2, 0, 1, 0, 2, 2, 1, 0, 0, 1, 2, 0, 1, 1, 2, 0])


def test_cap_per_class_follows_the_documented_rule() -> None:
    kept = cap_per_class(LABELS, 2, seed=5)
    rng = np.random.default_rng(5)  # the rule: classes ascending, rng.permutation of each class's indices
    expected = []
    labels = LABELS
    for cls in (0, 1, 2):
        members = np.flatnonzero(labels == cls)
        expected.extend(members[rng.permutation(members.size)[:2]].tolist())
    assert kept.tolist() == sorted(expected)
    assert np.bincount(LABELS[kept]).tolist() == [2, 2, 2]
    assert cap_per_class(torch.as_tensor(LABELS), 2, seed=5).tolist() == kept.tolist()  # tensors too
    assert cap_per_class(LABELS, 2, seed=6).tolist() != kept.tolist()
    assert cap_per_class(LABELS, 100, seed=5).tolist() == list(range(LABELS.size))
    assert cap_per_class(LABELS, None, seed=5).tolist() == list(range(LABELS.size))


def test_cap_per_class_within_given_indices() -> None:
    pool = np.array([1, 3, 7, 8, 11, 2, 6])  # class 0: 1 3 7 8 11, class 1: 2 6
    kept = cap_per_class(LABELS, 3, seed=0, indices=pool)
    assert set(kept.tolist()) <= set(pool.tolist()) and kept.tolist() == sorted(kept.tolist())
    assert np.bincount(LABELS[kept], minlength=2).tolist() == [3, 2]


def test_cap_samples_follows_the_same_rule() -> None:
    pool = np.array([3, 4, 9, 10, 12, 15])
    kept = cap_samples(pool, 4, seed=2)
    assert kept.tolist() == sorted(pool[np.random.default_rng(2).permutation(6)[:4]].tolist())
    assert cap_samples(pool, 6, seed=2).tolist() == pool.tolist()
    assert cap_samples(pool, None, seed=2).tolist() == pool.tolist()


@pytest.mark.parametrize("cap", [lambda: cap_samples(np.arange(4), 0, 0), lambda: cap_per_class(LABELS, -1, 0)])
def test_non_positive_limits_are_refused(cap: object) -> None:
    with pytest.raises(ConfigError, match="sample limits must be positive, got"):
        cap()  # type: ignore[operator]


def test_split_sizes_are_the_stratified_split_sizes() -> None:
    cut = {"source": 0.5, "train": 0.25, "select": 0.1, "test": 0.15}
    assert split_sizes(300, cut) == {"source": 150, "train": 75, "select": 30, "test": 45}
    sizes = split_sizes(7, {"train": 0.6, "select": 0.1, "test": 0.3})
    assert sum(sizes.values()) == 7 and sizes == {"train": 4, "select": 1, "test": 2}
    parts = stratified_split(np.zeros(7), {"train": 0.6, "select": 0.1, "test": 0.3}, seed=1)
    assert {n: p.size for n, p in parts.items()} == sizes
    assert split_sizes(2, cut)["select"] == 0


def test_split_fractions_renormalise_the_splits_cut_from_one_dataset() -> None:
    fractions = {"train": 0.6, "select": 0.1, "test": 0.3}
    assert split_fractions(fractions, ["train", "select"]) == pytest.approx({"train": 6 / 7, "select": 1 / 7})
    with pytest.raises(ConfigError, match=r"data.fractions needs exactly the splits \['train', 'select', 'test'\]"):
        split_fractions({"train": 0.7, "test": 0.3}, ["train", "test"])


def _rgb8(n: int = 4, bands: int = 3) -> torch.Tensor:
    return torch.randint(0, 256, (n, bands, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def test_normalization_choices() -> None:
    rgb8, six = _rgb8(), _rgb8(bands=6)
    assert choose_normalization("dataset", rgb8) == Normalization.from_images(rgb8)
    assert choose_normalization("imagenet", rgb8) == Normalization.imagenet()
    assert choose_normalization("imagenet", rgb8[:, 2:], rgb_bands=[2]) == Normalization.imagenet([2])
    unit = rgb8.float() / 255  # float RGB: ImageNet's statistics only when asked for (and 8-bit not required)
    assert choose_normalization("imagenet", unit) == Normalization.imagenet()
    with pytest.raises(ConfigError, match=r"data\.normalization=imagenet needs 8-bit RGB images, the data holds float32"):
        choose_normalization("imagenet", unit, eight_bit=True)
    recorded = Normalization((0.1,) * 6, (0.2,) * 6)
    assert choose_normalization("model", six, recorded=recorded) == recorded
    assert choose_normalization("auto", six, recorded=recorded) == recorded
    # auto without recorded statistics: the dataset's (fine-tuning) or ImageNet's for 8-bit RGB (frozen backbones)
    assert choose_normalization("auto", rgb8) == Normalization.from_images(rgb8)
    assert choose_normalization("auto", rgb8, auto_default="imagenet") == Normalization.imagenet()
    assert choose_normalization("auto", unit, auto_default="imagenet") == Normalization.from_images(unit)
    assert choose_normalization("auto", six, auto_default="imagenet") == Normalization.from_images(six)


@pytest.mark.parametrize(
    ("choice", "images", "recorded", "message"),
    [
        ("imagenet", _rgb8(bands=6), None, "data.normalization=imagenet needs 3 RGB bands, the data has 6; use 'dataset'"),
        ("model", _rgb8(), None, "data.normalization=model: the initialization records no normalization"),
        ("auto", _rgb8(bands=6), Normalization((0.0,) * 4, (1.0,) * 4), "normalization has 4 bands, the data has 6"),
        ("nope", _rgb8(), None, "data.normalization must be one of auto, dataset, imagenet, model, got 'nope'"),
    ],
)
def test_bad_normalization_requests_are_refused(
    choice: str, images: torch.Tensor, recorded: Normalization | None, message: str
) -> None:
    with pytest.raises(ConfigError) as info:
        choose_normalization(choice, images, recorded=recorded)
    assert message in str(info.value)


def test_a_lenient_imagenet_request_falls_back_to_the_data() -> None:
    for images, bands in ((_rgb8(bands=6), None), (_rgb8(bands=1), [3])):
        norm = choose_normalization("imagenet", images, rgb_bands=bands, strict=False)
        assert norm == Normalization.from_images(images)


def test_unit_range() -> None:
    eight = torch.tensor([0, 255], dtype=torch.uint8).view(2, 1, 1, 1)
    assert to_unit_range(eight).flatten().tolist() == [-1.0, 1.0]
    values = torch.arange(100, dtype=torch.float32).view(100, 1, 1, 1) * 10
    scaled = to_unit_range(values, train_idx=np.arange(50))  # percentiles of the training values 0..490
    assert scaled.min() == -1 and scaled.max() == 1 and scaled[25].item() == pytest.approx(0.0, abs=0.05)
    assert (scaled[60:] == 1).all()  # above the training range: clipped


def test_task_data_parts() -> None:
    images = torch.arange(6 * 2 * 2 * 2, dtype=torch.float32).view(6, 2, 2, 2)
    data = TaskData("classification", images, torch.tensor([0, 1, 0, 1, 0, 1]), ("a", "b"),
                    {"train": np.array([0, 1, 2, 3]), "select": np.array([4]), "test": np.array([5])})  # fmt: skip
    assert data.sizes() == {"train": 4, "select": 1, "test": 1} and data.num_bands == 2 and data.num_classes == 2
    test = data.part("test")
    assert len(test) == 1 and torch.equal(test.images[0], images[5]) and test.targets.tolist() == [1]
    assert data.digest() == TaskData("classification", images.clone(), data.targets, data.classes, {}).digest()
