"""Datasets for probing and CKA: train / select / test splits of an image folder or csmask chips.

Classification and regression read an image folder (``root/<class>/<image>``; regression targets
from a CSV ``file,target``); segmentation reads ukis-csmask scenes cut into chips. Splits are
:func:`geosane.data.stratified_split` (seeded); chips can instead keep whole scenes for testing.
Probes pick hyper-parameters on ``select`` and report on ``test``.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
    kind: Literal["folder", "csmask"] = "folder"
    image_size: int = 64
    bands: list[int] | None = None
    classes: list[str] | None = None
    targets: Path | None = None
    chip_size: int = 64
    test_scenes: list[str] = field(default_factory=list)
    split: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    split_seed: int = 0
    normalization: Literal["auto", "imagenet", "dataset"] = "auto"
    max_samples: int | None = None


Split = TaskPart  # raw images [N, C, H, W] and targets of one split (geosane.data.TaskPart)


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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_bands(self) -> int:
        return int(self.splits["train"].images.shape[1])


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
            parts = stratified_split(
                np.zeros(rest.size), {n: f / total for n, f in held.items()}, spec.split_seed
            )
        except DataError:
            raise DataError(
                f"data.test_scenes leaves {rest.size} chips, too few for the split {held}"
            ) from None
        return {"train": rest[parts["train"]], "select": rest[parts["select"]], "test": test}
    try:
        return stratified_split(np.zeros(count), {n: spec.split[n] for n in SPLITS}, spec.split_seed)
    except DataError:
        raise DataError(f"{count} chips are too few for the split {spec.split}") from None


def load_analysis_data(spec: DataSpec, task: TaskName) -> AnalysisData:
    """Load and split the dataset of ``spec`` for ``task``; raises :class:`DataError` on bad input."""
    _check_split_names(spec)
    if task == "segmentation":
        if spec.kind != "csmask":
            raise DataError("segmentation probing needs data.kind: csmask (image chips with masks)")
        chips = load_csmask(spec.root, chip_size=spec.chip_size)
        images, targets, class_names = chips.images, chips.masks, chips.classes
        splits = _chip_splits(spec, chips.scenes, len(chips))
        source_id = str(Path(spec.root).expanduser().resolve())
    else:
        if spec.kind != "folder":
            raise DataError(f"{task} needs data.kind: folder (an image folder root/<class>/<image>)")
        if spec.test_scenes:
            raise DataError("data.test_scenes applies to csmask scenes, not to an image folder")
        folder = load_image_folder(spec.root, spec.image_size)
        if spec.classes:
            folder = folder.select_classes(spec.classes)
        class_names = folder.classes
        images, labels = folder.images, folder.labels
        splits = stratified_split(labels.numpy(), spec.split, seed=spec.split_seed)
        if task == "regression":
            if spec.targets is None:
                raise DataError("regression needs data.targets: a CSV with columns file,target")
            targets, class_names = (
                _read_targets(Path(spec.targets).expanduser(), folder.root, folder.paths),
                (),
            )
        else:
            targets = labels
        source_id = folder.root
    if spec.bands is not None:
        bad = [b for b in spec.bands if not 0 <= b < images.shape[1]]
        if bad:
            raise DataError(f"data.bands {bad} out of range for {images.shape[1]}-band images")
        images = images[:, list(spec.bands)]
    splits = {  # each split capped with its own seed (split_seed + its position)
        name: cap_samples(idx, spec.max_samples, spec.split_seed + i)
        for i, (name, idx) in enumerate(splits.items())
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
        normalization.mean,
        normalization.std,
    ]
    digest.update(json.dumps(settings, default=str).encode())
    for name in SPLITS:
        digest.update(name.encode() + np.asarray(splits[name], dtype=np.int64).tobytes())
    image_key = digest.hexdigest()[:16]
    for name in SPLITS:
        digest.update(data[name].targets.contiguous().numpy().tobytes())
    return AnalysisData(task, data, normalization, tuple(class_names), image_key, digest.hexdigest()[:16])


def _normalization(spec: DataSpec, train_images: torch.Tensor) -> Normalization:
    """``auto``: ImageNet's statistics for 8-bit RGB images (the pretrained backbones' inputs), else
    the training split's (geosane.data.choose_normalization)."""
    return choose_normalization(spec.normalization, train_images, auto_default="imagenet", eight_bit=True)


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
