"""Datasets for probing, decoders and CKA: train / select / test splits held in memory.

Classification and regression read an image folder (``root/<class>/<image>``; regression targets
from a CSV ``file,target``); segmentation reads ukis-csmask scenes cut into chips. Splits are
:func:`geosane.data.stratified_split` (seeded); chips can instead keep whole scenes for testing.
``kind: torchgeo`` reads a TorchGeo dataset by name (``data.dataset``: ``eurosat``, ``LandCoverAI``,
any ``NonGeoDataset`` class; :mod:`geosane.data.torchgeo`) with its own ``train`` / ``val`` /
``test`` splits as train / select / test, each capped by ``max_samples`` and read into memory at
``image_size``. ``kind: sen1floods11`` reads the Sen1Floods11 hand-labelled flood chips from their
published layout (:mod:`geosane.data.sen1floods11`; ``data.sensor`` s1 or s2) with the release's
train / valid / test split files. Probes pick hyper-parameters on ``select`` and report on ``test``.

Temporal stacks: with ``data.time_steps: N`` a TorchGeo time-series dataset (``pastis``) is read as
stacks ``[N, T, C, H, W]`` of ``N`` frames each (evenly spaced, :func:`geosane.data.torchgeo.pick_time_steps`);
bands, normalisation (per band, pooled over T), caps and splits work on them as on single images.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from geosane.data import (
    DEFAULT_FRACTIONS,
    IGNORE_INDEX,
    SPLITS,
    Normalization,
    TaskPart,
    cap_samples,
    choose_normalization,
    load_csmask,
    load_image_folder,
    stratified_split,
)
from geosane.errors import DataError

__all__ = ["AnalysisData", "DataSpec", "Split", "TaskName", "label_subset", "load_analysis_data"]

TaskName = Literal["classification", "regression", "segmentation"]


@dataclass
class DataSpec:
    """Where the images come from and how they are split (``data:`` in a config)."""

    root: Path
    kind: Literal["folder", "csmask", "torchgeo", "sen1floods11"] = "folder"
    image_size: int = 64
    bands: list[int] | None = None
    classes: list[str] | None = None
    targets: Path | None = None
    chip_size: int = 64
    test_scenes: list[str] = field(default_factory=list)
    split: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    split_seed: int = 0
    normalization: Literal["auto", "imagenet", "dataset", "model"] = "auto"
    max_samples: int | None = None
    # kind: torchgeo: the dataset's name (geosane.data.TORCHGEO_DATASETS or a torchgeo.datasets class),
    # whether TorchGeo may download it into root, and extra constructor arguments
    dataset: str | None = None
    download: bool = False
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    # time series (kind: torchgeo, e.g. pastis): keep this many frames per series as a stack [T, C, H, W]
    time_steps: int | None = None
    # kind: sen1floods11: which chips, s1 (VV, VH) or s2 (13 bands)
    sensor: Literal["s1", "s2"] = "s1"


Split = TaskPart  # raw images [N, C, H, W] or stacks [N, T, C, H, W] and targets (geosane.data.TaskPart)


@dataclass
class AnalysisData:
    """The three splits, the normalization applied to images, class names, and cache keys of the
    images (``key``) and of images plus targets (``targets_key``)."""

    task: TaskName
    splits: dict[str, Split]
    normalization: Normalization
    class_names: tuple[str, ...]
    key: str
    targets_key: str
    # data.normalization as asked: 'auto' / 'model' let each model use its recorded statistics
    normalization_choice: str = "auto"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_bands(self) -> int:
        return int(self.splits["train"].images.shape[-3])

    @property
    def time_steps(self) -> int | None:
        """Frames per temporal stack ``[N, T, C, H, W]``; None for single images."""
        images = self.splits["train"].images
        return int(images.shape[1]) if images.ndim == 5 else None


def _read_targets(path: Path, root: str, files: tuple[str, ...]) -> torch.Tensor:
    """Regression targets for ``files`` from a CSV with columns ``file,target`` (file relative to root)."""
    if not path.is_file():
        raise DataError(f"regression targets file not found: {path}")
    values: dict[str, float] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"file", "target"} <= set(reader.fieldnames):
            raise DataError(
                f"{path} needs a header with columns 'file' and 'target', got {reader.fieldnames}"
            )
        for line, row in enumerate(reader, start=2):
            try:
                values[str(Path(root, row["file"]).resolve())] = float(row["target"])
            except (TypeError, ValueError):
                raise DataError(f"{path}:{line}: target {row.get('target')!r} is not a number") from None
    missing = [f for f in files if str(Path(f).resolve()) not in values]
    if missing:
        raise DataError(f"{path} has no target for {len(missing)} image(s), e.g. {missing[0]}")
    return torch.tensor([values[str(Path(f).resolve())] for f in files], dtype=torch.float32)


def _check_split_names(spec: DataSpec) -> None:
    names = set(spec.split)
    needed = {"train", "select"} if spec.test_scenes else set(SPLITS)
    if not needed <= names <= set(SPLITS):
        raise DataError(
            f"data.split must name the splits {sorted(needed)} (test may come from data.test_scenes), "
            f"got {list(spec.split)}"
        )


def _chip_splits(spec: DataSpec, scenes: tuple[str, ...], count: int) -> dict[str, np.ndarray]:
    """Chips: whole ``test_scenes`` for testing (if given), a seeded random split otherwise
    (:func:`geosane.data.stratified_split` of chips that all share one class)."""
    if spec.test_scenes:
        unknown = sorted(set(spec.test_scenes) - set(scenes))
        if unknown:
            raise DataError(f"data.test_scenes {unknown} not found; scenes: {sorted(set(scenes))}")
        is_test = np.isin(np.asarray(scenes), spec.test_scenes)
        test, rest = np.flatnonzero(is_test), np.flatnonzero(~is_test)
        if rest.size < 2:
            raise DataError("data.test_scenes leaves fewer than 2 chips for train and select")
        held = {"select": spec.split["select"], "train": spec.split["train"]}  # select is cut first
        total = sum(held.values())
        try:
            parts = stratified_split(np.zeros(rest.size), {n: f / total for n, f in held.items()}, spec.split_seed)
        except DataError:
            raise DataError(f"data.test_scenes leaves {rest.size} chips, too few for the split {held}") from None
        return {"train": rest[parts["train"]], "select": rest[parts["select"]], "test": test}
    try:
        return stratified_split(np.zeros(count), {n: spec.split[n] for n in SPLITS}, spec.split_seed)
    except DataError:
        raise DataError(f"{count} chips are too few for the split {spec.split}") from None


def _torchgeo_splits(
    spec: DataSpec, task: TaskName | Literal["any"]
) -> tuple[TaskName, torch.Tensor, torch.Tensor, tuple[str, ...], dict[str, np.ndarray], str]:
    """Every split of a TorchGeo dataset (capped by ``max_samples``) in memory: the images, their
    targets, the class names, each split's indices into them and the source id of the cache key."""
    from geosane.data.torchgeo import TORCHGEO_DATASETS, read_torchgeo_splits

    if not spec.dataset:
        raise DataError(f"data.kind: torchgeo needs data.dataset (e.g. {', '.join(sorted(TORCHGEO_DATASETS))})")
    if spec.test_scenes:
        raise DataError("data.test_scenes applies to csmask scenes; a TorchGeo dataset has its own test split")
    read = read_torchgeo_splits(
        spec.dataset,
        spec.root,
        spec.image_size,
        tasks=("classification", "segmentation") if task == "any" else (task,),
        max_samples=spec.max_samples,
        seed=spec.split_seed,  # each split capped with its own seed (split_seed + its position)
        download=spec.download,
        kwargs=spec.dataset_kwargs,
        time_steps=spec.time_steps,
        key="",  # the task and the dataset disagree; the message names both
        hint=" (regression reads an image folder with data.targets)" if task == "regression" else "",
    )
    return read.task, read.images, read.targets, read.classes, read.splits, read.source  # type: ignore[return-value]


def load_analysis_data(spec: DataSpec, task: TaskName | Literal["any"]) -> AnalysisData:
    """Load and split the dataset of ``spec`` for ``task``; raises :class:`DataError` on bad input.

    ``any`` (CKA): whatever the data holds, classes (image folder) or masks (csmask, TorchGeo)."""
    if spec.kind not in ("torchgeo", "sen1floods11"):  # these bring their own splits
        _check_split_names(spec)
    if spec.time_steps is not None and spec.kind != "torchgeo":
        raise DataError(
            f"data.time_steps applies to TorchGeo time series (e.g. pastis), not to data.kind: {spec.kind}"
        )
    chosen: TaskName
    if spec.kind == "torchgeo":  # read split by split, each capped on the way
        chosen, images, targets, class_names, splits, source_id = _torchgeo_splits(spec, task)
    elif spec.kind == "sen1floods11":
        chosen, images, targets, class_names, splits, source_id = _sen1floods11_splits(spec, task)
    else:
        default: TaskName = "segmentation" if spec.kind == "csmask" else "classification"
        chosen = default if task == "any" else task
        if chosen == "segmentation":
            if spec.kind != "csmask":
                raise DataError(
                    "segmentation probing needs data.kind: csmask (image chips with masks) or a TorchGeo "
                    "segmentation dataset (data.kind: torchgeo)"
                )
            chips = load_csmask(spec.root, chip_size=spec.chip_size)
            images, targets, class_names = chips.images, chips.masks, chips.classes
            splits = _chip_splits(spec, chips.scenes, len(chips))
            source_id = str(Path(spec.root).expanduser().resolve())
        else:
            if spec.kind != "folder":
                raise DataError(f"{chosen} needs data.kind: folder (an image folder root/<class>/<image>)")
            if spec.test_scenes:
                raise DataError("data.test_scenes applies to csmask scenes, not to an image folder")
            folder = load_image_folder(spec.root, spec.image_size)
            if spec.classes:
                folder = folder.select_classes(spec.classes)
            class_names = folder.classes
            images, labels = folder.images, folder.labels
            splits = stratified_split(labels.numpy(), spec.split, seed=spec.split_seed)
            if chosen == "regression":
                if spec.targets is None:
                    raise DataError("regression needs data.targets: a CSV with columns file,target")
                targets, class_names = (
                    _read_targets(Path(spec.targets).expanduser(), folder.root, folder.paths),
                    (),
                )
            else:
                targets = labels
            source_id = folder.root
    if spec.bands is not None and spec.kind != "sen1floods11":  # (sen1floods11 picks them on reading)
        bad = [b for b in spec.bands if not 0 <= b < images.shape[-3]]
        if bad:
            raise DataError(f"data.bands {bad} out of range for {images.shape[-3]}-band images")
        images = images[..., list(spec.bands), :, :]  # bands: third axis from the end (also of stacks)
    if spec.kind not in ("torchgeo", "sen1floods11"):
        splits = {  # each split capped with its own seed (split_seed + its position)
            name: cap_samples(idx, spec.max_samples, spec.split_seed + i) for i, (name, idx) in enumerate(splits.items())
        }
    data = {
        name: Split(images[torch.as_tensor(idx)], targets[torch.as_tensor(idx)])
        for name, idx in splits.items()
    }
    normalization = _normalization(spec, data["train"].images)
    # Features depend on the images only; probe results also on the targets (a separate key).
    digest = hashlib.sha256()
    settings = [
        source_id,
        spec.image_size,
        spec.bands,
        spec.classes,
        spec.chip_size,
        spec.time_steps,
        normalization.mean,
        normalization.std,
    ]
    digest.update(json.dumps(settings, default=str).encode())
    for name in SPLITS:
        digest.update(name.encode() + np.asarray(splits[name], dtype=np.int64).tobytes())
    image_key = digest.hexdigest()[:16]
    for name in SPLITS:
        digest.update(data[name].targets.contiguous().numpy().tobytes())
    return AnalysisData(
        chosen, data, normalization, tuple(class_names), image_key, digest.hexdigest()[:16], spec.normalization
    )


def _sen1floods11_splits(
    spec: DataSpec, task: TaskName | Literal["any"]
) -> tuple[TaskName, torch.Tensor, torch.Tensor, tuple[str, ...], dict[str, np.ndarray], str]:
    """The Sen1Floods11 hand-labelled chips (:mod:`geosane.data.sen1floods11`), as _torchgeo_splits."""
    from geosane.data.sen1floods11 import SEN1FLOODS11_CLASSES, load_sen1floods11

    if task not in ("segmentation", "any"):
        raise DataError(f"Sen1Floods11 is a segmentation dataset (water / land per pixel), not {task}")
    if spec.test_scenes:
        raise DataError("data.test_scenes applies to csmask scenes; Sen1Floods11 has its own test split")
    parts = load_sen1floods11(
        spec.root, spec.sensor, spec.bands, spec.image_size, spec.max_samples, spec.split_seed
    )
    splits, start = {}, 0
    for name in SPLITS:
        splits[name] = np.arange(start, start + len(parts[name].chips))
        start += len(parts[name].chips)
    images = torch.cat([parts[n].images for n in SPLITS])
    masks = torch.cat([parts[n].masks for n in SPLITS])
    source = json.dumps(
        ["sen1floods11", str(Path(spec.root).expanduser().resolve()), spec.sensor], default=str
    )
    return "segmentation", images, masks, SEN1FLOODS11_CLASSES, splits, source


def _normalization(spec: DataSpec, train_images: torch.Tensor) -> Normalization:
    """``auto``: ImageNet's statistics for 8-bit RGB images (the pretrained backbones' inputs), else
    the training split's (geosane.data.choose_normalization)."""
    choice = "auto" if spec.normalization == "model" else spec.normalization  # 'model': per model, later
    return choose_normalization(choice, train_images, auto_default="imagenet", eight_bit=True)


def label_subset(
    split: Split, task: TaskName, fraction: float, seed: int, class_names: tuple[str, ...]
) -> np.ndarray:
    """Indices of a seeded ``fraction`` of ``split``: per class for classification (rounded), of
    chips for segmentation, of samples for regression. Raises :class:`DataError` when a class
    would get no labelled sample (pixel, for segmentation)."""
    if not 0 < fraction <= 1:
        raise DataError(f"label fraction {fraction} must be in (0, 1]")
    rng = np.random.default_rng(seed)
    n = len(split)
    if task == "classification":
        labels = split.targets.numpy()
        parts = []
        for cls, name in enumerate(class_names):
            idx = np.flatnonzero(labels == cls)
            take = int(np.floor(fraction * idx.size + 0.5))
            if take == 0:
                need = 0.5 / idx.size if idx.size else float("inf")
                raise DataError(
                    f"label fraction {fraction:g} leaves class '{name}' with 0 training samples "
                    f"({idx.size} in the train split); use a fraction >= {need:.3g}"
                )
            parts.append(rng.choice(idx, size=take, replace=False))
        return np.sort(np.concatenate(parts))
    take = int(np.floor(fraction * n + 0.5))
    minimum = 2 if task == "regression" else 1
    if take < minimum:
        raise DataError(
            f"label fraction {fraction:g} of {n} training samples leaves {take}; need at least {minimum}"
        )
    chosen = np.sort(rng.choice(n, size=take, replace=False))
    if task == "segmentation":
        masks = split.targets[torch.as_tensor(chosen)]
        present = torch.bincount(masks[masks != IGNORE_INDEX].flatten(), minlength=len(class_names))
        empty = [class_names[c] for c in range(len(class_names)) if present[c] == 0]
        if empty:
            raise DataError(
                f"label fraction {fraction:g} (seed {seed}) leaves class(es) {empty} with 0 labelled pixels "
                f"in its {take} training chip(s); use a larger fraction"
            )
    return chosen
