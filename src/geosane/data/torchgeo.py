"""Benchmark datasets through TorchGeo (the optional ``torchgeo`` extra).

:func:`open_torchgeo` opens one split of a TorchGeo ``NonGeoDataset`` and turns TorchGeo's
failures into one-line :class:`DataError`\\ s: data absent and ``download`` off, or a download that
fails (offline). :class:`TorchGeoSamples` adapts a dataset (or a subset of it) to the
``(image, target)`` pairs geosane's task models train on: resized, normalised, augmented.

Known names (case-insensitive) map to TorchGeo classes and their task; any other TorchGeo
``NonGeoDataset`` class can be named directly (its task is inferred from the first sample).
Sen1Floods11 is not part of TorchGeo 0.8; geosane reads its published layout itself
(:mod:`geosane.data.sen1floods11`), and ``flood_s1`` (Copernicus-Bench Flood-S1, Kuro Siwo) and
``MMFlood`` are the flood-mapping datasets TorchGeo ships.

Time series: a dataset whose images are ``[T, C, H, W]`` is read as temporal stacks when
``time_steps`` is given (:func:`pick_time_steps`: that many frames, evenly spaced over each
series, so series of different lengths become stacks of one length), else its times are stacked as
``T * C`` bands. ``pastis`` (PASTIS, Sentinel-2 series of crop parcels) is such a dataset; it has
no ``split`` argument, so geosane maps its five folds: folds 1-3 train, 4 select, 5 test.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from geosane.data.csmask import IGNORE_INDEX
from geosane.data.task import SPLITS, cap_samples
from geosane.data.tensors import Normalization, flip_rotate
from geosane.errors import DataError

__all__ = [
    "TORCHGEO_DATASETS",
    "TorchGeoDatasetInfo",
    "TorchGeoSamples",
    "TorchGeoSplits",
    "dataset_classes",
    "dataset_labels",
    "infer_task",
    "open_torchgeo",
    "pick_time_steps",
    "read_torchgeo_detection",
    "read_torchgeo_splits",
    "torchgeo_available",
]

# split names of geosane -> TorchGeo
SPLIT_NAMES = {"train": "train", "select": "val", "test": "test"}


@dataclass(frozen=True)
class TorchGeoDatasetInfo:
    """A TorchGeo dataset geosane knows: class name, task, default constructor arguments."""

    class_name: str
    task: str
    description: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    # detection sets: the TorchGeo splits with boxes that geosane's train / select / test are cut
    # from (see read_torchgeo_detection), the class names and the first class's label value
    annotated_splits: tuple[str, ...] = ()
    classes: tuple[str, ...] = ()
    first_label: int = 0
    # datasets without a 'split' argument: the constructor arguments of geosane's train / select / test
    split_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    # mask values that are no class (scored as ignore_index); they must be the last class names
    ignore_labels: tuple[int, ...] = ()
    # images are time series [T, C, H, W] of varying T: data.time_steps is required
    temporal: bool = False


TORCHGEO_DATASETS: dict[str, TorchGeoDatasetInfo] = {
    "eurosat": TorchGeoDatasetInfo("EuroSAT", "classification", "Sentinel-2, 13 bands, 10 classes, 64 px"),
    "eurosat100": TorchGeoDatasetInfo("EuroSAT100", "classification", "100-image EuroSAT for tutorials"),
    "eurosatspatial": TorchGeoDatasetInfo("EuroSATSpatial", "classification", "EuroSAT, longitude splits"),
    "resisc45": TorchGeoDatasetInfo("RESISC45", "classification", "aerial RGB, 45 classes, 256 px"),
    "ucmerced": TorchGeoDatasetInfo("UCMerced", "classification", "aerial RGB, 21 classes, 256 px"),
    "bigearthnet": TorchGeoDatasetInfo(
        "BigEarthNet",
        "multilabel",
        "Sentinel-2 (bands='s2') / Sentinel-1 patches, 19 or 43 labels",
        {"bands": "s2", "num_classes": 19},
    ),
    # PASTIS has five folds and no split argument: folds 1-3 train, 4 select (val), 5 test, the
    # convention of the PASTIS benchmark papers' first cross-validation fold and of PANGAEA-bench
    "pastis": TorchGeoDatasetInfo(
        "PASTIS",
        "segmentation",
        "Sentinel-2 time series [T, 10, 128, 128] of French crop parcels, 19 classes + void (ignored)",
        {"bands": "s2", "mode": "semantic"},
        split_kwargs={"train": {"folds": [1, 2, 3]}, "select": {"folds": [4]}, "test": {"folds": [5]}},
        ignore_labels=(19,),
        temporal=True,
    ),
    "flood_s1": TorchGeoDatasetInfo(
        "CopernicusBenchFloodS1", "segmentation", "Sentinel-1 flood mapping (Kuro Siwo), 3 classes"
    ),
    # DIOR's test split has no boxes: geosane trains on 'train' and halves 'val' into select / test
    "dior": TorchGeoDatasetInfo(
        "DIOR",
        "detection",
        "Google Earth RGB, 20 object classes, 800 px, horizontal boxes",
        annotated_splits=("train", "val"),
    ),
    # NWPU VHR-10: 650 annotated ('positive') images, cut into train / select / test by geosane
    "vhr10": TorchGeoDatasetInfo(
        "VHR10",
        "detection",
        "NWPU VHR-10 RGB, 10 object classes, ~1000 px (needs pycocotools)",
        annotated_splits=("positive",),
        classes=(
            "airplane",
            "ship",
            "storage_tank",
            "baseball_diamond",
            "tennis_court",
            "basketball_court",
            "ground_track_field",
            "harbor",
            "bridge",
            "vehicle",
        ),
        first_label=1,
    ),
}

_NOT_IN_TORCHGEO = {
    "sen1floods11": (
        "Sen1Floods11 is not part of TorchGeo 0.8; geosane reads its published layout with "
        "data.kind: sen1floods11 (analysis) — or use dataset=flood_s1 (Copernicus-Bench Flood-S1) or MMFlood"
    )
}


def torchgeo_available() -> bool:
    """Whether the optional ``torchgeo`` extra is installed."""
    return importlib.util.find_spec("torchgeo") is not None


def _dataset_class(name: str) -> tuple[type, TorchGeoDatasetInfo | None]:
    if not torchgeo_available():
        raise DataError(
            f"dataset '{name}' needs TorchGeo: pip install 'geosane[torchgeo]' "
            "(or use an image folder with data.kind=folder)"
        )
    import torchgeo.datasets as tgd

    key = name.lower().replace("-", "").replace(" ", "")
    if key in _NOT_IN_TORCHGEO:
        raise DataError(_NOT_IN_TORCHGEO[key])
    info = TORCHGEO_DATASETS.get(key)
    class_name = info.class_name if info else name
    cls = getattr(tgd, class_name, None)
    if not isinstance(cls, type) or not issubclass(cls, tgd.NonGeoDataset):
        known = ", ".join(sorted(TORCHGEO_DATASETS))
        raise DataError(
            f"unknown TorchGeo dataset '{name}' (known: {known}, or any torchgeo.datasets NonGeoDataset class)"
        )
    return cls, info


def open_torchgeo(
    name: str,
    root: str | Path,
    split: str,
    download: bool = False,
    kwargs: dict[str, Any] | None = None,
) -> Any:
    """Open split ``split`` (``train`` / ``select`` / ``test``) of TorchGeo dataset ``name``.

    ``select`` is TorchGeo's ``val`` split. With ``download=True`` TorchGeo fetches missing files
    into ``root``; offline, or with ``download=False`` and no data under ``root``, a
    :class:`DataError` says what to pass instead.
    """
    cls, info = _dataset_class(name)
    from torchgeo.datasets import DatasetNotFoundError

    arguments = {**(info.kwargs if info else {}), **(kwargs or {})}
    if info is not None and info.split_kwargs:  # folds instead of a 'split' argument (PASTIS)
        if split not in info.split_kwargs:
            raise DataError(
                f"TorchGeo {cls.__name__} has no split '{split}' (splits: {', '.join(info.split_kwargs)})"
            )
        arguments = {**arguments, **info.split_kwargs[split]}
    else:
        arguments = {"split": SPLIT_NAMES.get(split, split), **arguments}
    root = Path(root).expanduser()
    try:
        return cls(root=str(root), download=download, **arguments)
    except DatasetNotFoundError:
        raise DataError(
            f"{cls.__name__} not found under {root}: pass data.download=true to fetch it (needs internet), "
            f"or data.root=DIR holding a copy in TorchGeo's layout, or train on your own image folder "
            "with data.kind=folder data.root=DIR"
        ) from None
    except OSError as exc:  # urllib's URLError and socket errors derive from OSError
        if not download:
            raise DataError(f"cannot read {cls.__name__} under {root}: {exc}") from None
        raise DataError(
            f"could not download {cls.__name__} into {root} ({type(exc).__name__}: {exc}); offline? "
            f"download it on a connected machine (data.download=true) and pass data.root=DIR here, "
            "or train on your own image folder with data.kind=folder data.root=DIR"
        ) from None
    except (TypeError, AssertionError, ValueError) as exc:
        raise DataError(f"invalid arguments {arguments} for TorchGeo {cls.__name__}: {exc}") from None


def dataset_info(name: str) -> TorchGeoDatasetInfo | None:
    """What geosane knows about TorchGeo dataset ``name`` (None for a class named directly)."""
    return TORCHGEO_DATASETS.get(name.lower().replace("-", "").replace(" ", ""))


def pick_time_steps(total: int, wanted: int, what: str = "a series") -> list[int]:
    """``wanted`` frame indices evenly spaced over ``total`` (first and last included, rounded to the
    nearest frame): a deterministic choice that keeps the series' seasonal span. ``wanted == 1``
    keeps the middle frame. Fewer frames than ``wanted`` raise a :class:`DataError`."""
    if wanted < 1:
        raise DataError(f"data.time_steps must be at least 1, got {wanted}")
    if total < wanted:
        raise DataError(f"data.time_steps: {what} has {total} time steps, fewer than the {wanted} asked for")
    if wanted == 1:
        return [(total - 1) // 2]
    return [int(v) for v in np.round(np.linspace(0, total - 1, wanted)).astype(int)]


def detection_info(name: str) -> TorchGeoDatasetInfo | None:
    """The detection set geosane knows under ``name`` (``dior``, ``vhr10``), else None."""
    info = TORCHGEO_DATASETS.get(name.lower().replace("-", "").replace(" ", ""))
    return info if info is not None and info.task == "detection" else None


def _detection_sample(
    sample: dict[str, Any], size: int, first_label: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
    """uint8 ``[3, size, size]`` image, its boxes scaled with it and 0-based labels; boxes left
    with no area after clipping to the image are dropped (their count is returned)."""
    image = torch.as_tensor(sample["image"])
    if image.ndim != 3 or image.shape[0] != 3:
        raise DataError(f"a detection image must be RGB [3, H, W], got shape {tuple(image.shape)}")
    height, width = int(image.shape[-2]), int(image.shape[-1])
    resized = F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True)[0]
    if "bbox_xyxy" in sample:
        boxes = torch.as_tensor(sample["bbox_xyxy"]).float().reshape(-1, 4)
        labels = torch.as_tensor(sample["label"]).long().reshape(-1) - first_label
    else:  # an image without objects (VHR10 then keeps its raw COCO record under 'label')
        boxes, labels = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    boxes = boxes * torch.tensor([size / width, size / height, size / width, size / height])
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, size)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, size)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    image_u8 = resized.round().clamp(0, 255).to(torch.uint8)
    return image_u8, {"boxes": boxes[keep], "labels": labels[keep]}, int((~keep).sum())


def read_torchgeo_detection(
    name: str,
    root: str | Path,
    image_size: int,
    fractions: dict[str, float],
    seed: int = 0,
    download: bool = False,
    kwargs: dict[str, Any] | None = None,
    max_samples: dict[str, int] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """geosane's ``train`` / ``select`` / ``test`` of a TorchGeo detection set, read into memory as
    :class:`geosane.data.detection.DetectionData` at ``image_size`` (boxes scaled with the images).

    With two annotated TorchGeo splits (DIOR: train, val) the first is ``train`` and the second is
    cut into ``select`` / ``test`` in the ratio of ``fractions``; with one (VHR10's positive set) it
    is cut into all three. ``max_samples`` caps each split (seeded). Boxes that no longer cover a
    pixel after resizing are dropped; the second value reports how many, per split.
    """
    from geosane.data.detection import DetectionData, split_detection
    from geosane.data.task import cap_samples

    info = detection_info(name)
    if info is None:
        known = ", ".join(k for k, v in TORCHGEO_DATASETS.items() if v.task == "detection")
        raise DataError(f"'{name}' is not a TorchGeo detection set geosane reads (known: {known})")
    opened = {split: open_torchgeo(name, root, split, download, kwargs) for split in info.annotated_splits}
    classes = info.classes or dataset_classes(next(iter(opened.values())))

    def read(dataset: Any, limit: int | None) -> tuple[Any, int]:
        take = cap_samples(np.arange(len(dataset)), limit, seed)
        images, targets, files, dropped = [], [], [], 0
        for index in (int(i) for i in take):
            image, target, lost = _detection_sample(dataset[index], image_size, info.first_label)
            bad = target["labels"][(target["labels"] < 0) | (target["labels"] >= len(classes))]
            if bad.numel():
                raise DataError(
                    f"{info.class_name} item {index}: label {int(bad[0]) + info.first_label} is not one of "
                    f"its {len(classes)} classes"
                )
            images.append(image)
            targets.append(target)
            files.append(f"{info.class_name}[{index}]")
            dropped += lost
        if not images:
            raise DataError(f"TorchGeo {info.class_name} under {root} has no images in this split")
        return DetectionData(torch.stack(images), targets, tuple(classes), tuple(files)), dropped

    limits = max_samples or {}
    parts: dict[str, Any] = {}
    dropped: dict[str, int] = {}
    if len(info.annotated_splits) >= 2:
        parts["train"], dropped["train"] = read(opened[info.annotated_splits[0]], limits.get("train"))
        held, lost = read(opened[info.annotated_splits[1]], None)
        held_out = fractions["select"] + fractions["test"]
        ratio = {k: fractions[k] / held_out for k in ("select", "test")}
        cut = split_detection(held, ratio, seed)
        for split in ("select", "test"):
            parts[split] = cut[split].subset(cap_samples(np.arange(len(cut[split])), limits.get(split), seed))
        dropped["select+test"] = lost
    else:
        everything, dropped["all"] = read(opened[info.annotated_splits[0]], None)
        for split, part in split_detection(everything, fractions, seed).items():
            parts[split] = part.subset(cap_samples(np.arange(len(part)), limits.get(split), seed))
    return parts, dropped


def infer_task(sample: dict[str, torch.Tensor]) -> str:
    """``segmentation`` (a ``mask``), ``multilabel`` (a label vector) or ``classification``."""
    if "mask" in sample:
        return "segmentation"
    label = sample.get("label")
    if label is None:
        raise DataError(f"TorchGeo sample has neither 'label' nor 'mask' (keys {sorted(sample)})")
    return "multilabel" if torch.as_tensor(label).ndim == 1 else "classification"


def dataset_classes(dataset: Any) -> tuple[str, ...]:
    """Class names of a TorchGeo dataset (``classes`` or BigEarthNet's ``class_sets``)."""
    class_sets = getattr(dataset, "class_sets", None)
    if isinstance(class_sets, dict) and getattr(dataset, "num_classes", None) in class_sets:
        return tuple(class_sets[dataset.num_classes])
    classes = getattr(dataset, "classes", None)
    if classes is None:
        raise DataError(f"TorchGeo {type(dataset).__name__} does not list its classes")
    return tuple(str(c) for c in classes)


def dataset_labels(dataset: Any) -> np.ndarray | None:
    """Single-label targets without decoding images (ImageFolder-based datasets), else None."""
    targets = getattr(dataset, "targets", None)
    return np.asarray(targets) if targets is not None else None


class TorchGeoSamples(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """``(image, target)`` pairs from a TorchGeo dataset: resized, normalised, optionally augmented.

    Images are read lazily (benchmarks do not fit in memory); ``image_size`` resizes images
    (bilinear) and masks (nearest); time series ``[T, C, H, W]`` are stacked as ``T * C`` bands, or
    with ``time_steps`` kept as stacks of that many frames (:func:`pick_time_steps`). Mask values
    outside 0..254, and those of ``ignore_labels``, become ``ignore_index`` 255, which is never scored.
    """

    def __init__(
        self,
        dataset: Any,
        indices: Sequence[int] | np.ndarray,
        normalization: Normalization,
        image_size: int | None = None,
        bands: Sequence[int] | None = None,
        augment: bool = False,
        time_steps: int | None = None,
        ignore_labels: Sequence[int] = (),
    ) -> None:
        self.dataset = dataset
        self.time_steps = time_steps
        self.ignore_labels = tuple(ignore_labels)
        self.indices = [int(i) for i in indices]
        self.normalization = normalization
        self.image_size = image_size
        self.bands = list(bands) if bands is not None else None
        self.augment = augment

    def __len__(self) -> int:
        return len(self.indices)

    def raw(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (float, resized, selected bands; not normalised) and target of item ``index``."""
        sample = self.dataset[self.indices[index]]
        image = torch.as_tensor(sample["image"]).float()
        if image.ndim == 2:
            image = image[None]
        elif image.ndim == 4 and self.time_steps is not None:  # a temporal stack of time_steps frames
            frames = pick_time_steps(image.shape[0], self.time_steps, f"item {self.indices[index]}")
            image = image[frames]
        elif image.ndim == 4:  # a time series [T, C, H, W] (e.g. pre/post-flood): times become bands
            image = image.flatten(0, 1)
        elif self.time_steps is not None:
            raise DataError(
                f"data.time_steps is set but item {self.indices[index]} is a single image {tuple(image.shape)}, "
                "not a time series [T, C, H, W]; leave data.time_steps unset"
            )
        if self.bands is not None:
            image = image[..., self.bands, :, :]
        dense = "mask" in sample
        target = torch.as_tensor(sample["mask"] if dense else sample["label"]).long()
        if dense and target.ndim == 3:
            target = target[0]
        if self.image_size and tuple(image.shape[-2:]) != (self.image_size, self.image_size):
            size = (self.image_size, self.image_size)
            if image.ndim == 4:  # the frames of a stack resize as a batch
                image = F.interpolate(image, size=size, mode="bilinear", antialias=True)
            else:
                image = F.interpolate(image[None], size=size, mode="bilinear", antialias=True)[0]
            if dense:
                target = F.interpolate(target[None, None].float(), size=size, mode="nearest")[0, 0].long()
        if dense:
            unlabelled = (target < 0) | (target > 254)
            for value in self.ignore_labels:
                unlabelled |= target == value
            target = torch.where(unlabelled, IGNORE_INDEX, target)
        return image, target

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, target = self.raw(index)
        image = self.normalization(image)
        if self.augment:
            image, target = flip_rotate(image, target)
        return image.contiguous(), target.contiguous() if target.ndim else target


@dataclass(frozen=True)
class TorchGeoSplits:
    """Every split of a TorchGeo dataset read into memory (:func:`read_torchgeo_splits`).

    ``images`` ``[N, C, S, S]`` float (raw values, not normalised) and ``targets`` of all splits,
    ``splits`` each split's indices into them, ``source`` a stable id for cache keys.
    """

    task: str
    images: torch.Tensor
    targets: torch.Tensor
    classes: tuple[str, ...]
    splits: dict[str, np.ndarray]
    source: str


def read_torchgeo_splits(
    name: str,
    root: str | Path,
    image_size: int,
    *,
    tasks: Sequence[str],
    max_samples: int | None = None,
    seed: int = 0,
    download: bool = False,
    kwargs: dict[str, Any] | None = None,
    time_steps: int | None = None,
    key: str = "data.dataset",
    hint: str = "",
) -> TorchGeoSplits:
    """TorchGeo's own ``train`` / ``val`` / ``test`` splits of ``name`` as train / select / test,
    each capped to ``max_samples`` (seeded with ``seed`` + the split's position, see
    :func:`geosane.data.cap_samples`) and resized to ``image_size``; time series as stacks of
    ``time_steps`` frames (:func:`pick_time_steps`), which a temporal dataset requires.

    ``tasks``: the tasks the caller can use; another is refused naming ``key`` (if given; ``hint``
    appended).
    Labels a dataset marks as not a class (PASTIS' void) are dropped from the classes and ignored.
    """
    info = dataset_info(name)
    if info is not None and info.temporal and time_steps is None:
        raise DataError(
            f"TorchGeo {name} holds time series of varying length: set data.time_steps (frames kept "
            "per series, evenly spaced) to read them as stacks [N, T, C, H, W]"
        )
    root = Path(root).expanduser()
    opened = {n: open_torchgeo(name, root, n, download, kwargs) for n in SPLITS}
    found = infer_task(opened["train"][0])
    if found not in tasks:
        prefix = f"{key}: " if key else ""
        raise DataError(f"{prefix}TorchGeo {name} is a {found} dataset, not {' or '.join(tasks)}{hint}")
    classes = dataset_classes(opened["train"])
    ignore = info.ignore_labels if info is not None else ()
    if ignore:  # e.g. PASTIS' void label, the last class: not a class, never scored
        classes = classes[: min(ignore)]
    images, targets, splits, start = [], [], {}, 0
    for i, split in enumerate(SPLITS):
        idx = cap_samples(np.arange(len(opened[split])), max_samples, seed + i)
        if idx.size == 0:
            raise DataError(f"TorchGeo {name} split '{split}' under {root} is empty")
        samples = TorchGeoSamples(
            opened[split], idx, Normalization((0.0,), (1.0,)), image_size, time_steps=time_steps, ignore_labels=ignore
        )
        pairs = [samples.raw(j) for j in range(len(samples))]
        images.append(torch.stack([p[0] for p in pairs]))
        targets.append(torch.stack([p[1] for p in pairs]))
        splits[split] = np.arange(start, start + idx.size)
        start += idx.size
    source = json.dumps(["torchgeo", name, str(root.resolve()), kwargs or {}, time_steps], default=str)
    return TorchGeoSplits(found, torch.cat(images), torch.cat(targets), classes, splits, source)
