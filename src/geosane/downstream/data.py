"""Task data for fine-tuning: train / selection / test datasets from folders, scenes or TorchGeo.

:func:`load_task_data` turns a :class:`DataConfig` into a :class:`TaskSplits`. The split is a pure
function of the data and ``split_seed``, so every initialization and every seed of a comparison
sees the same three splits; only ``select`` may be used to choose anything, only ``test`` to
report.

- ``folder``: an image folder; stratified split by class.
- ``csmask``: ``.npz`` scenes cut into chips; whole scenes (``group_by: scene``) or spatial blocks
  (``group_by: block``) are dealt to the splits, so neighbouring chips never straddle two splits;
  ``test_scenes`` holds named scenes out as the test split.
- ``detection``: a COCO- or VOC-style folder of boxes (:func:`geosane.data.load_detection_folder`);
  split stratified on each image's main class, images without objects forming their own stratum.
- ``torchgeo``: a TorchGeo benchmark with its official ``train`` / ``val`` / ``test`` splits
  (``val`` is the selection split); the detection sets (``dior``, ``vhr10``) are read into memory at
  ``image_size`` (:func:`geosane.data.torchgeo.read_torchgeo_detection`: DIOR's test split has no
  boxes, so its ``val`` is halved into select and test).

Detection splits are :class:`geosane.data.detection.DetectionData` (uint8 images and box targets;
the detector normalises inside the model with ``normalization``).

``test_data`` / ``select_data`` replace the test / selection part with a separate folder (same
classes and bands, checked before anything runs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import torch
from torch.utils.data import Dataset

from geosane.data import (
    SPLITS,
    ImageFolderData,
    Normalization,
    SegmentationChips,
    TensorImageDataset,
    cap_per_class,
    cap_samples,
    choose_normalization,
    count_folder_images,
    load_csmask,
    load_image_folder,
    split_fractions,
    stratified_split,
)
from geosane.data.detection import DetectionData, load_detection_folder, split_detection
from geosane.data.splits import group_split
from geosane.downstream.config import DataConfig
from geosane.errors import ConfigError, DataError, GeosaneError
from geosane.tasks import TaskKind

__all__ = [
    "SPLITS",
    "DownstreamTask",
    "TaskData",
    "TaskSplits",
    "check_same_classes",
    "check_selection_size",
    "load_task_data",
]

# the tasks of geosane.tasks.fit and detection (geosane.tasks.fit_detection)
DownstreamTask = TaskKind | Literal["detection"]

_NORM_SAMPLES = 256
# caps draw with split_seed + this (geosane.data.task's RNG rule), apart from the split's own draw
_CAP_SEED_OFFSET = 7919


@dataclass
class TaskSplits:
    """The three splits of one task, ready for :func:`geosane.tasks.fit` (detection:
    :class:`DetectionData` for :func:`geosane.tasks.fit_detection`).

    Not :class:`geosane.data.TaskData` (images and split indices in memory): these are the finished
    datasets, normalised and augmented, lazy for TorchGeo benchmarks that do not fit in memory.
    Built only by :func:`load_task_data`; ``TaskData`` is its old name, kept as an alias.
    """

    task: DownstreamTask
    classes: tuple[str, ...]
    in_chans: int
    train: Dataset | DetectionData
    select: Dataset | DetectionData
    test: Dataset | DetectionData
    normalization: Normalization
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLITS}

    def image_task(self) -> tuple[TaskKind, Dataset, Dataset, Dataset]:
        """The task and its train / select / test datasets for :func:`geosane.tasks.fit` (not detection)."""
        if self.task == "detection" or not all(isinstance(getattr(self, n), Dataset) for n in SPLITS):
            raise GeosaneError(f"this is a {self.task} task; it trains with geosane.tasks.fit_detection")
        return (
            self.task,
            cast(Dataset, self.train),
            cast(Dataset, self.select),
            cast(Dataset, self.test),
        )


TaskData = TaskSplits  # the name before 0.2 (imports of geosane.downstream.TaskData keep working)


def check_same_classes(
    train_classes: tuple[str, ...], other_classes: tuple[str, ...], what: str, root: Path, other: Path
) -> None:
    """Raise a :class:`DataError` naming the class folders that differ between two folders."""
    if tuple(train_classes) == tuple(other_classes):
        return
    missing = sorted(set(train_classes) - set(other_classes))
    extra = sorted(set(other_classes) - set(train_classes))
    raise DataError(
        f"class folders differ between training data {root} and {what} data {other}: "
        f"missing from {what} {missing}, not in training {extra}"
    )


def check_selection_size(num_images: int, num_classes: int, where: str | Path) -> None:
    """A selection set needs at least one image per class."""
    if num_images < num_classes:
        raise DataError(
            f"selection data {where} has {num_images} image(s) for {num_classes} classes; "
            "it needs at least one image per class"
        )


def _fractions(config: DataConfig, names: list[str]) -> dict[str, float]:
    return split_fractions(config.fractions, names)


def _needed_splits(config: DataConfig) -> list[str]:
    """The splits that are cut from ``root`` (those without a separate folder)."""
    return [
        n
        for n in SPLITS
        if not (n == "test" and config.test_data) and not (n == "select" and config.select_data)
    ]


def _cap(indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """At most ``limit`` of ``indices`` (``data.max_samples``), by geosane.data's capping rule."""
    return cap_samples(indices, limit, seed + _CAP_SEED_OFFSET)


def _cap_per_class(indices: np.ndarray, limit: int | None, seed: int, labels: np.ndarray) -> np.ndarray:
    """At most ``limit`` of ``indices`` per class (``data.train_per_class``), by the same rule."""
    return cap_per_class(labels, limit, seed + _CAP_SEED_OFFSET, indices=indices)


def _cap_parts(config: DataConfig, parts: dict[str, Any]) -> None:
    """Cap each in-memory split to ``data.max_samples`` (in place), by geosane.data's capping rule."""
    for n in SPLITS:
        if n in config.max_samples:
            parts[n] = parts[n].subset(
                _cap(np.arange(len(parts[n])), config.max_samples[n], config.split_seed)
            )


def _normalization(
    config: DataConfig, train_images: torch.Tensor, model: Normalization | None = None
) -> Normalization:
    """The normalisation ``data.normalization`` asks for: ``auto`` is the model's recorded one when the
    initialization has it (a csmask U-Net's band statistics), else the training split's statistics."""
    return choose_normalization(config.normalization, train_images, recorded=model, auto_default="dataset")


def _in_memory_datasets(
    config: DataConfig, parts: dict[str, Any], model_norm: Normalization | None = None
) -> tuple[dict[str, TensorImageDataset], Normalization]:
    """Cap the parts (``max_samples``, as for TorchGeo data), normalise with training statistics, wrap.

    ``parts`` hold ``ImageFolderData`` (labels) or ``SegmentationChips`` (masks) per split.
    """
    _cap_parts(config, parts)
    norm = _normalization(config, parts["train"].images, model_norm)
    datasets = {}
    for n in SPLITS:
        targets = parts[n].masks if isinstance(parts[n], SegmentationChips) else parts[n].labels
        datasets[n] = TensorImageDataset(
            parts[n].images, targets, norm, augment=config.augment and n == "train"
        )
    return datasets, norm


def _root(config: DataConfig) -> Path:
    if config.root is None:
        raise ConfigError(
            "data.root is not set (an image folder, a folder of .npz scenes, or a TorchGeo root)"
        )
    return Path(config.root).expanduser()


# ----------------------------------------------------------------------------------------------
# image folders


def _load_folder(path: Path, config: DataConfig) -> ImageFolderData:
    return load_image_folder(path, config.image_size).select_bands(config.bands)


def _folder_task_data(config: DataConfig, task: str, model_norm: Normalization | None = None) -> TaskSplits:
    if task not in ("auto", "classification"):
        raise ConfigError(f"image folders hold single-label classes; task '{task}' needs other data")
    root = _root(config)
    data = _load_folder(root, config)
    if len(data.classes) < 2:
        raise DataError(
            f"{root} has {len(data.classes)} class folder(s) ({', '.join(data.classes) or 'none'}); "
            "classification needs at least 2 (root/<class>/<image>)"
        )
    separate: dict[str, ImageFolderData] = {}
    if config.select_data is not None:
        check_selection_size(count_folder_images(config.select_data), len(data.classes), config.select_data)
    for name, path in (("test", config.test_data), ("select", config.select_data)):
        if path is None:
            continue
        other = _load_folder(Path(path).expanduser(), config)
        check_same_classes(data.classes, other.classes, name, root, Path(path))
        if other.num_bands != data.num_bands:
            raise DataError(
                f"{name} data {path} has {other.num_bands} bands, training data {root} has {data.num_bands}"
            )
        separate[name] = other
    names = _needed_splits(config)
    labels = data.labels.numpy()
    if len(names) > 1:
        splits = stratified_split(labels, _fractions(config, names), seed=config.split_seed)
    else:
        splits = {"train": np.arange(len(data))}
    splits["train"] = _cap_per_class(splits["train"], config.train_per_class, config.split_seed, labels)
    parts = {n: data.subset(splits[n]) for n in names} | separate
    datasets, norm = _in_memory_datasets(config, parts, model_norm)
    info = {
        "kind": "folder",
        "root": str(root),
        "test_data": str(config.test_data) if config.test_data else None,
        "select_data": str(config.select_data) if config.select_data else None,
        "image_size": config.image_size,
    }
    return TaskSplits(
        "classification", data.classes, data.num_bands, **datasets, normalization=norm, info=info
    )


# ----------------------------------------------------------------------------------------------
# scene chips


def _select_chip_bands(chips: SegmentationChips, bands: list[int] | None) -> SegmentationChips:
    if bands is None:
        return chips
    bad = [b for b in bands if not 0 <= b < chips.images.shape[1]]
    if bad:
        raise DataError(f"band indices {bad} out of range for {chips.images.shape[1]}-band scenes")
    return SegmentationChips(
        chips.images[:, bands],
        chips.masks,
        chips.scenes,
        chips.classes,
        tuple(chips.bands[b] for b in bands),
        chips.origins,
    )


def _chips_task_data(config: DataConfig, task: str, model_norm: Normalization | None = None) -> TaskSplits:
    if task not in ("auto", "segmentation"):
        raise ConfigError(f"scene chips carry segmentation masks; task '{task}' needs other data")
    root = _root(config)
    chips = _select_chip_bands(load_csmask(root, config.chip_size), config.bands)
    separate: dict[str, SegmentationChips] = {}
    for name, path in (("test", config.test_data), ("select", config.select_data)):
        if path is not None:
            separate[name] = _select_chip_bands(
                load_csmask(Path(path).expanduser(), config.chip_size), config.bands
            )
    remaining = np.arange(len(chips))
    if config.test_scenes:
        if config.test_data:
            raise ConfigError("set either data.test_scenes or data.test_data, not both")
        test_idx = chips.scene_indices(config.test_scenes)
        separate["test"] = chips.subset(test_idx)
        remaining = np.setdiff1d(remaining, test_idx)
    names = [n for n in SPLITS if n not in separate]
    pool = chips.subset(remaining)
    groups = pool.scenes if config.group_by == "scene" else pool.block_groups(config.block_size)
    if len(names) > 1:
        try:
            splits = group_split(groups, _fractions(config, names), seed=config.split_seed)
        except DataError as exc:
            hint = "; try data.group_by=block" if config.group_by == "scene" else ""
            raise DataError(f"cannot split the chips of {root} by {config.group_by}: {exc}{hint}") from None
    else:
        splits = {"train": np.arange(len(pool))}
    parts = {n: pool.subset(splits[n]) for n in names} | separate
    datasets, norm = _in_memory_datasets(config, parts, model_norm)
    info = {
        "kind": "csmask",
        "root": str(root),
        "chip_size": config.chip_size,
        "group_by": config.group_by,
        "scenes": {n: sorted(set(parts[n].scenes)) for n in SPLITS},
    }
    return TaskSplits(
        "segmentation", chips.classes, int(chips.images.shape[1]), **datasets, normalization=norm, info=info
    )


# ----------------------------------------------------------------------------------------------
# TorchGeo


def _geobench_task_data(config: DataConfig, task: str, model_norm: Normalization | None = None) -> TaskSplits:
    """A GEO-Bench task (``data.dataset``, e.g. ``m-eurosat``; ``data.root`` = ``$GEO_BENCH_DIR``),
    read lazily like a TorchGeo benchmark, with its ``default_partition.json`` splits."""
    from geosane.data.geobench import GEOBENCH_TASKS, open_geobench

    if not config.dataset:
        raise ConfigError(f"data.kind=geobench needs data.dataset (e.g. {', '.join(GEOBENCH_TASKS)})")
    return _torchgeo_task_data(config, task, model_norm, opener=open_geobench)


def _torchgeo_task_data(
    config: DataConfig,
    task: str,
    model_norm: Normalization | None = None,
    opener: Callable[[str, Path, str], Any] | None = None,
) -> TaskSplits:
    """A TorchGeo benchmark by name (or, with ``opener``, any dataset of TorchGeo-style samples)."""
    from geosane.data.torchgeo import (
        TORCHGEO_DATASETS,
        TorchGeoSamples,
        dataset_classes,
        dataset_info,
        dataset_labels,
        detection_info,
        infer_task,
        open_torchgeo,
        read_torchgeo_detection,
    )

    if not config.dataset:
        raise ConfigError(
            f"data.kind=torchgeo needs data.dataset (e.g. {', '.join(sorted(TORCHGEO_DATASETS))})"
        )
    if config.test_data or config.select_data:
        raise ConfigError(
            "data.test_data / data.select_data apply to folders and scenes; TorchGeo data has its own splits"
        )
    root = _root(config)
    kind = "torchgeo" if opener is None else config.kind
    if opener is None and detection_info(config.dataset) is not None:
        if task not in ("auto", "detection"):
            raise ConfigError(f"TorchGeo {config.dataset} is a detection dataset, not {task}")
        parts, dropped = read_torchgeo_detection(
            config.dataset, root, config.image_size, _fractions(config, list(SPLITS)), config.split_seed,
            config.download, config.dataset_kwargs, config.max_samples,
        )  # fmt: skip
        return _detection_parts(
            config, parts, model_norm,
            {"kind": "torchgeo", "dataset": config.dataset, "root": str(root), "dropped_boxes": dropped},
        )  # fmt: skip
    dataset = config.dataset
    series = dataset_info(dataset) if opener is None else None
    if series is not None and series.temporal:  # time series of varying length (PASTIS)
        raise DataError(
            f"TorchGeo {series.class_name} holds time series [T, C, H, W] of varying length, which "
            "fine-tuning does not take; probe it with geosane probe (data.time_steps, temporal.aggregation)"
        )
    if opener is None:
        opened = {n: open_torchgeo(dataset, root, n, config.download, config.dataset_kwargs) for n in SPLITS}
    else:
        opened = {n: opener(dataset, root, n) for n in SPLITS}
    first = opened["train"][0]
    found = infer_task(first)
    if task != "auto" and task != found:
        raise ConfigError(f"{kind} dataset {config.dataset} is a {found} dataset, not {task}")
    classes = dataset_classes(opened["train"])
    indices: dict[str, np.ndarray] = {}
    for n in SPLITS:
        idx = np.arange(len(opened[n]))
        labels = dataset_labels(opened[n])
        if n == "train" and config.train_per_class is not None:
            if labels is None:
                raise ConfigError(
                    f"data.train_per_class needs single-label data; {config.dataset} is {found}"
                )
            idx = _cap_per_class(idx, config.train_per_class, config.split_seed, labels)
        indices[n] = _cap(idx, config.max_samples.get(n), config.split_seed)
        if indices[n].size == 0:
            raise DataError(f"{kind} dataset {config.dataset} split '{n}' under {root} is empty")
    raw = TorchGeoSamples(
        opened["train"], indices["train"], Normalization((0.0,), (1.0,)), config.image_size, config.bands
    )
    take = np.linspace(0, len(raw) - 1, num=min(len(raw), _NORM_SAMPLES)).astype(int)
    sample_images = torch.stack([raw.raw(int(i))[0] for i in take])
    in_chans = int(sample_images.shape[1])
    norm = _normalization(config, sample_images, model_norm)
    datasets = {
        n: TorchGeoSamples(
            opened[n],
            indices[n],
            norm,
            config.image_size,
            config.bands,
            augment=config.augment and n == "train",
        )
        for n in SPLITS
    }
    info = {
        "kind": kind, "dataset": config.dataset, "root": str(root), "image_size": config.image_size,
    }  # fmt: skip
    return TaskSplits(found, classes, in_chans, **datasets, normalization=norm, info=info)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------------------
# detection


def _detection_parts(
    config: DataConfig,
    parts: dict[str, DetectionData],
    model_norm: Normalization | None,
    info: dict[str, Any],
) -> TaskSplits:
    """Checked detection splits; the detector's normalisation from the training images (``auto``)."""
    classes = parts["train"].classes
    for name, part in parts.items():
        if part.classes != classes:
            raise DataError(
                f"the {name} split has classes {list(part.classes)}, the training split {list(classes)}"
            )
        if not any(t["labels"].numel() for t in part.targets):
            raise DataError(
                f"the {name} split of {info.get('root')} holds no box at all; nothing to learn or score"
            )
    norm = _normalization(config, parts["train"].images, model_norm)
    info = {
        **info,
        "image_size": config.image_size,
        "boxes": {n: sum(len(t["labels"]) for t in p.targets) for n, p in parts.items()},
    }
    return TaskSplits(
        "detection", classes, int(parts["train"].images.shape[1]),
        parts["train"], parts["select"], parts["test"], normalization=norm, info=info,
    )  # fmt: skip


def _detection_task_data(
    config: DataConfig, task: str, model_norm: Normalization | None = None
) -> TaskSplits:
    if task not in ("auto", "detection"):
        raise ConfigError(f"a box folder holds detection targets; task '{task}' needs other data")
    if config.bands is not None:
        raise ConfigError("data.bands does not apply to detection folders (their images are RGB)")
    root = _root(config)
    data = load_detection_folder(root, config.image_size)
    separate: dict[str, DetectionData] = {}
    for name, path in (("test", config.test_data), ("select", config.select_data)):
        if path is not None:
            other = load_detection_folder(Path(path).expanduser(), config.image_size)
            if other.classes != data.classes:
                raise DataError(
                    f"classes differ between training data {root} {list(data.classes)} and {name} data "
                    f"{path} {list(other.classes)}"
                )
            separate[name] = other
    names = _needed_splits(config)
    if len(names) > 1:
        parts = split_detection(data, _fractions(config, names), seed=config.split_seed)
    else:
        parts = {"train": data}
    parts |= separate
    _cap_parts(config, parts)
    info = {
        "kind": "detection",
        "root": str(root),
        "test_data": str(config.test_data) if config.test_data else None,
        "select_data": str(config.select_data) if config.select_data else None,
    }
    return _detection_parts(config, parts, model_norm, info)


def load_task_data(
    config: DataConfig, task: str = "auto", model_normalization: Normalization | None = None
) -> TaskSplits:
    """Load and split the task's data (raises :class:`DataError` / :class:`ConfigError` on bad input).

    ``model_normalization``: the initialization's recorded normalization, used when
    ``data.normalization`` is ``auto`` (the default) or ``model``.
    """
    if config.image_size <= 0 or config.chip_size <= 0:
        raise ConfigError("data.image_size and data.chip_size must be positive")
    loaders = {
        "folder": _folder_task_data,
        "csmask": _chips_task_data,
        "detection": _detection_task_data,
        "torchgeo": _torchgeo_task_data,
        "geobench": _geobench_task_data,
    }
    return loaders[config.kind](config, task, model_normalization)
