"""Config schemas of ``geosane finetune`` and ``geosane compare`` (YAML through geosane.config).

Packaged presets live in ``geosane/configs/downstream/`` (``rsscn7.yaml``, ``csmask.yaml``,
``eurosat.yaml``, ``compare_rsscn7.yaml`` ...); a config file names them under ``base:``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from geosane.config import find_config, load_config, to_dict
from geosane.data.splits import DEFAULT_FRACTIONS
from geosane.errors import ConfigError
from geosane.tasks import FitConfig

__all__ = [
    "CONTROL_KINDS",
    "DEFAULT_INITS",
    "INIT_KINDS",
    "ArchConfig",
    "CompareConfig",
    "ControlsConfig",
    "DareConfig",
    "DataConfig",
    "FinetuneConfig",
    "GeneratedConfig",
    "TaskConfig",
    "TiesConfig",
    "ZooInitConfig",
    "check_compare_config",
    "dotted_overrides",
    "load_compare_config",
    "load_finetune_config",
]

DEFAULT_INITS = ("scratch", "prompt", "zoo_average", "ties", "dare", "generated")
# the controls of geosane.downstream.controls: what generated weights must beat (method notes §4)
CONTROL_KINDS = ("prompt_noise", "nearest", "reconstruction", "weight_selection", "pruned", "distillation")
INIT_KINDS = (*DEFAULT_INITS, *CONTROL_KINDS)


@dataclass
class DataConfig:
    """Where the task's images come from and how they are split.

    ``kind``: ``folder`` (``root/<class>/<image>``), ``csmask`` (``.npz`` scenes cut into chips),
    ``detection`` (a COCO- or VOC-style folder of boxes, e.g. ``geosane data detection-composite``)
    ``torchgeo`` (``dataset`` names a TorchGeo dataset, detection sets ``dior`` and ``vhr10``
    included; ``root`` is its download folder) or ``geobench`` (``dataset`` names a GEO-Bench task
    such as ``m-eurosat``; ``root`` is ``$GEO_BENCH_DIR``).
    ``test_data`` / ``select_data``: separate folders (same classes) used as the test / selection
    split instead of a part of ``root``. ``normalization``: ``auto`` uses the initialization's
    recorded per-band statistics when it has them (e.g. an ONNX model's sidecar), else the training
    split's; ``dataset``, ``imagenet`` and ``model`` force one.
    """

    kind: Literal["folder", "csmask", "detection", "torchgeo", "geobench"] = "folder"
    root: Path | None = None
    test_data: Path | None = None
    select_data: Path | None = None
    image_size: int = 64
    bands: list[int] | None = None
    fractions: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_FRACTIONS))
    split_seed: int = 0
    train_per_class: int | None = None
    max_samples: dict[str, int] = field(default_factory=dict)
    normalization: Literal["auto", "dataset", "imagenet", "model"] = "auto"
    augment: bool = True
    chip_size: int = 64
    group_by: Literal["scene", "block"] = "scene"
    block_size: int = 128
    test_scenes: list[str] = field(default_factory=list)
    dataset: str | None = None
    download: bool = False
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class TaskConfig:
    """The task head: ``kind`` ``auto`` follows the data (folders: classification, csmask:
    segmentation, box folders and DIOR: detection).

    ``reset_head``: every initialization starts from a fresh (seeded) classifier head, so that
    comparisons measure the backbone; off keeps a head of the weights that already fits the classes.
    ``decoder`` / ``decoder_channels``: the segmentation head. ``detector`` / ``fpn_channels``: the
    detection model (torchvision's FCOS, RetinaNet or Faster R-CNN on an FPN over the backbone).
    """

    kind: Literal["auto", "classification", "multilabel", "segmentation", "detection"] = "auto"
    reset_head: bool = True
    decoder: Literal["unet", "upernet", "linear"] = "unet"
    decoder_channels: int = 32
    detector: Literal["fcos", "retinanet", "faster_rcnn"] = "fcos"
    fpn_channels: int = 64


@dataclass
class ArchConfig:
    """The architecture every initialization is loaded into (``timm.create_model(name, **kwargs)``).

    Empty ``name``: taken from the init source (a zoo entry, a generated model card, a timm prompt).
    """

    library: str = "timm"
    name: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class FinetuneConfig:
    """``geosane finetune``: one initialization, one task, one budget."""

    init: str = "scratch"
    arch: ArchConfig = field(default_factory=ArchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: FitConfig = field(default_factory=FitConfig)
    out: Path | None = None
    checkpoint: bool = True


@dataclass
class TiesConfig:
    density: float = 0.2
    lam: float = 1.0


@dataclass
class DareConfig:
    drop_rate: float = 0.5
    lam: float = 1.0
    seed: int = 0
    combine: Literal["mean", "sum"] = "mean"


@dataclass
class ZooInitConfig:
    """Zoo members for the average / TIES / DARE baselines.

    ``members`` empty: every zoo model of the compared architecture (minus ``exclude`` and the
    base). ``base``: a zoo id or any model source; empty: the model the members' metadata
    ``init_from`` names (it must be the same for all of them).
    """

    dir: Path | None = None
    members: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    base: str | None = None
    ties: TiesConfig = field(default_factory=TiesConfig)
    dare: DareConfig = field(default_factory=DareConfig)


@dataclass
class GeneratedConfig:
    """A ``geosane generate`` output directory (``model_card.json`` + ranked candidates)."""

    dir: Path | None = None
    top_k: int = 3


@dataclass
class ControlsConfig:
    """Settings of the control initializations (``geosane.downstream.controls``).

    ``prompt_noise``: the prompt plus Gaussian noise at the rank-1 generated candidate's distance,
    per tensor (``noise_seed``). ``nearest``: the zoo member of the compared architecture nearest
    to the prompt. ``reconstruction``: candidate 1 of ``reconstruction_dir``, a ``geosane generate``
    output for the nearest member with ``--bandwidth 0`` (the autoencoder's reconstruction of it).
    ``weight_selection`` / ``pruned``: inherited from the smallest larger zoo model of the same
    family (``larger``: a zoo id to use instead). ``distillation``: trained from scratch with the
    predictions of ``teacher`` (a ``geosane finetune`` run on this task) mixed into the loss
    (``distill_alpha``, ``distill_temperature``). ``not_applicable``: ``error`` refuses a control
    that cannot be built; ``report`` lists it in the report as "not applicable: why".
    """

    noise_seed: int = 0
    reconstruction_dir: Path | None = None
    larger: str | None = None
    teacher: Path | None = None
    distill_alpha: float = 0.5
    distill_temperature: float = 4.0
    not_applicable: Literal["error", "report"] = "error"


@dataclass
class CompareConfig:
    """``geosane compare``: the same architecture and budget from several initializations.

    ``workers`` > 1 runs that many fine-tunings at once in separate processes, each with
    ``threads_per_worker`` torch threads (default: CPU cores / workers).
    """

    arch: ArchConfig = field(default_factory=ArchConfig)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: FitConfig = field(default_factory=FitConfig)
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    inits: list[str] = field(default_factory=lambda: list(DEFAULT_INITS))
    prompt: str | None = None
    zoo: ZooInitConfig = field(default_factory=ZooInitConfig)
    generated: GeneratedConfig = field(default_factory=GeneratedConfig)
    controls: ControlsConfig = field(default_factory=ControlsConfig)
    test_curve: bool = False  # also record test after every epoch and before training (reported only)
    out: Path | None = None
    plots: bool = True
    workers: int = 1
    threads_per_worker: int | None = None


def load_finetune_config(
    path: str | Path | None, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> FinetuneConfig:
    """Compose and validate a finetune config (``path`` may name a packaged preset)."""
    return load_config(FinetuneConfig, find_config(path, "downstream") if path else None, overrides)


def dotted_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """``{"data.root": x, "train.epochs": 3}`` -> nested dicts (values taken verbatim, ``None`` dropped)."""
    nested: dict[str, Any] = {}
    for key, value in values.items():
        if value is None:
            continue
        node = nested
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def check_compare_config(config: CompareConfig) -> CompareConfig:
    """Checks beyond the schema: known inits, worker counts, distinct seeds."""
    unknown = [i for i in config.inits if i not in INIT_KINDS]
    if unknown:
        raise ConfigError(f"unknown init(s) {unknown} in 'inits' (choose from {', '.join(INIT_KINDS)})")
    if config.workers < 1 or (config.threads_per_worker is not None and config.threads_per_worker < 1):
        raise ConfigError("'workers' and 'threads_per_worker' must be >= 1")
    if len(config.seeds) != len(set(config.seeds)) or not config.seeds:
        raise ConfigError(f"'seeds' must be a non-empty list of distinct integers, got {config.seeds}")
    return config


def load_compare_config(
    path: str | Path | CompareConfig | None, overrides: Sequence[str] | Mapping[str, Any] = ()
) -> CompareConfig:
    """Compose and validate a compare config.

    ``path``: a YAML file, a packaged preset name, or a :class:`CompareConfig` to apply
    ``overrides`` to. ``overrides``: ``key=value`` strings (YAML values) or a mapping, nested or
    with dotted keys (values verbatim).
    """
    if isinstance(overrides, Mapping):
        overrides = dotted_overrides(overrides)
    if isinstance(path, CompareConfig):
        config = load_config(CompareConfig, None, overrides, defaults=to_dict(path))
    else:
        config = load_config(CompareConfig, find_config(path, "downstream") if path else None, overrides)
    return check_compare_config(config)
