"""Labelled data for SatDiFuser runs, scaled to [-1, 1] as diffusion models expect.

Image folders (``geosane.data.load_image_folder``) and csmask chips (``geosane.data.load_csmask``)
are split with ``geosane.data.stratified_split`` (train / select / test), so every stage that uses
the same seed and fractions sees the same test images. A TorchGeo dataset brings its own splits
(``geosane.data.torchgeo.read_torchgeo_splits``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from geosane.data import (
    IGNORE_INDEX,
    cap_per_class,
    load_csmask,
    load_image_folder,
    stratified_split,
    to_unit_range,
)
from geosane.data.task import TaskData as _TaskData
from geosane.difuser.config import TaskConfig
from geosane.errors import ConfigError, DataError
from geosane.tasks import TaskKind

__all__ = ["TaskData", "load_task_data", "load_training_images", "to_unit_range"]


@dataclass(frozen=True)
class TaskData(_TaskData):
    """:class:`geosane.data.TaskData` with images ``[N, C, S, S]`` float32 in [-1, 1] (no further
    normalization) and the ``ignore_index`` of segmentation masks."""

    ignore_index: int = 255

    @property
    def kind(self) -> TaskKind:
        return self.task  # type: ignore[return-value]


def _select_bands(images: torch.Tensor, bands: list[int] | None) -> torch.Tensor:
    if bands is None:
        return images
    bad = [b for b in bands if not 0 <= b < images.shape[1]]
    if bad:
        raise DataError(f"task.bands {bad} out of range for {images.shape[1]}-band images")
    return images[:, list(bands)]


def load_task_data(task: TaskConfig, image_size: int) -> TaskData:
    """Load ``task`` (image folder or csmask chips) resized to ``image_size`` with its splits."""
    if task.root is None:
        raise ConfigError("task.root is not set (the labelled dataset folder)")
    if task.dataset == "torchgeo":
        return _torchgeo_task(task, image_size)
    if task.dataset == "image_folder":
        if task.kind != "classification":
            raise ConfigError(
                f"task.kind {task.kind} is not available for image folders (one label per image): "
                "use classification, or the Python API with your own multi-hot targets"
            )
        data = load_image_folder(task.root, image_size)
        keep = cap_per_class(data.labels, task.max_per_class, task.split_seed)
        data = data.subset(keep)
        splits = stratified_split(data.labels.numpy(), task.fractions, task.split_seed)
        images = to_unit_range(_select_bands(data.images, task.bands), splits["train"])
        root = Path(data.root).expanduser().resolve()
        names = [
            Path(p).resolve().relative_to(root).as_posix() for p in data.paths
        ]  # per-image metadata rows
        return TaskData(
            "classification", images, data.labels, data.classes, splits, info={"images": names},
            ignore_index=task.ignore_index,
        )  # fmt: skip
    if task.kind != "segmentation":
        raise ConfigError("task.dataset csmask needs task.kind segmentation")
    chips = load_csmask(task.root, task.chip_size)
    scene_names = sorted(set(chips.scenes))
    scene_ids = np.array([scene_names.index(s) for s in chips.scenes])
    keep = cap_per_class(scene_ids, task.max_per_class, task.split_seed)  # per scene
    chips = chips.subset(keep)
    scene_ids = scene_ids[keep]
    if task.train_scenes is not None:  # whole scenes for training, the others split into select / test
        train = chips.scene_indices(task.train_scenes)
        rest = np.setdiff1d(np.arange(len(chips)), train)
        if rest.size == 0:
            raise ConfigError("task.train_scenes names every scene; none is left for select / test")
        held = {k: v for k, v in task.fractions.items() if k != "train"}
        total = sum(held.values())
        parts = stratified_split(scene_ids[rest], {k: v / total for k, v in held.items()}, task.split_seed)
        splits = {"train": train, **{k: rest[v] for k, v in parts.items()}}
    else:
        splits = stratified_split(scene_ids, task.fractions, task.split_seed)
    images = _select_bands(chips.images, task.bands)
    if images.shape[-1] != image_size:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True)
    images = to_unit_range(images, splits["train"])
    return TaskData(
        "segmentation", images, chips.masks, tuple(chips.classes), splits, ignore_index=task.ignore_index
    )


def _torchgeo_task(task: TaskConfig, image_size: int) -> TaskData:
    """A TorchGeo dataset by name with its own splits; ``task.kind`` must be the dataset's task."""
    from geosane.data.torchgeo import TORCHGEO_DATASETS, read_torchgeo_splits

    if not task.name:
        raise ConfigError(
            f"task.dataset torchgeo needs task.name (e.g. {', '.join(sorted(TORCHGEO_DATASETS)[:6])}, "
            "or any torchgeo.datasets class)"
        )
    if task.train_scenes is not None:
        raise ConfigError("task.train_scenes applies to csmask scenes; a TorchGeo dataset has its own splits")
    assert task.root is not None
    read = read_torchgeo_splits(
        task.name,
        task.root,
        image_size,
        tasks=(task.kind,),
        max_samples=task.max_samples,
        seed=task.split_seed,
        download=task.download,
        kwargs=task.dataset_kwargs,
        key="task.kind",
    )
    images = to_unit_range(_select_bands(read.images, task.bands), read.splits["train"])
    targets = read.targets.float() if task.kind == "multilabel" else read.targets
    if task.kind == "segmentation" and task.ignore_index != IGNORE_INDEX:  # TorchGeoSamples marks 255
        targets = torch.where(targets == IGNORE_INDEX, task.ignore_index, targets)
    return TaskData(
        task.kind, images, targets, read.classes, read.splits, info={"source": read.source},
        ignore_index=task.ignore_index,
    )  # fmt: skip


def load_training_images(
    root: str,
    image_size: int,
    split: str = "train",
    fractions: dict[str, float] | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Unlabeled images ``[N, C, S, S]`` in [-1, 1]: the ``train`` split of an image folder, or all."""
    data = load_image_folder(root, image_size)
    if split == "train":
        data = data.subset(stratified_split(data.labels.numpy(), fractions, seed)["train"])
    return to_unit_range(data.images)
