"""Config schemas of ``geosane probe`` and ``geosane cka`` (YAML through :mod:`geosane.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from geosane.analysis.data import DataSpec, TaskName
from geosane.analysis.layers import Pooling
from geosane.analysis.models import ModelSpec
from geosane.analysis.probes import LinearProbeConfig, ProbeMethod
from geosane.analysis.temporal import TemporalSettings
from geosane.tasks import FitConfig

__all__ = ["CkaConfig", "DecoderSettings", "ProbeConfig", "ProbeSettings"]

Adaptation = Literal["frozen", "finetuned"]
CkaEstimator = Literal["minibatch", "linear", "debiased"]


@dataclass
class ProbeSettings:
    """Layerwise probes: methods, label fractions of the train split, seeds and their settings."""

    methods: list[ProbeMethod] = field(default_factory=lambda: ["ridge"])
    fractions: list[float] = field(default_factory=lambda: [0.1, 1.0])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    linear: LinearProbeConfig = field(default_factory=LinearProbeConfig)
    ridge_alphas: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0])
    logistic_cs: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0])
    pixels_per_image: int = 256

    def __post_init__(self) -> None:
        if not self.methods or not self.fractions or not self.seeds:
            raise ValueError("probe.methods, probe.fractions and probe.seeds must not be empty")


@dataclass
class DecoderSettings:
    """``--mode decoders``: decoder heads x backbone adaptation x label fraction x seed, one budget."""

    names: list[Literal["linear", "upernet", "unet"]] = field(
        default_factory=lambda: ["linear", "upernet", "unet"]
    )
    adaptations: list[Adaptation] = field(default_factory=lambda: ["frozen", "finetuned"])
    out_indices: list[int] | None = None
    channels: int = 64
    seeds: list[int] = field(default_factory=lambda: [0])
    augment: bool = True
    fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=10, batch_size=16, lr=1e-3))
    # what the heads predict: mask (classes per pixel), value (data.targets per image),
    # fraction:<class> (that class's share of a chip's labelled pixels), band:<name|index> (a
    # held-out band per pixel); default: mask for task segmentation, value for task regression
    target: str | None = None
    # train on these fractions of the train split: one seeded subset per fraction (label_seed),
    # the same for every model, decoder, adaptation and seed, and nested (10 % inside 50 %)
    label_fractions: list[float] = field(default_factory=lambda: [1.0])
    label_seed: int = 0

    def __post_init__(self) -> None:
        for name in ("names", "adaptations", "seeds", "label_fractions"):
            if not getattr(self, name):
                raise ValueError(f"decoders.{name} must not be empty")
        bad = [f for f in self.label_fractions if not 0 < f <= 1]
        if bad:
            raise ValueError(
                f"decoders.label_fractions must be in (0, 1], got [{', '.join(f'{f:g}' for f in bad)}]"
            )
        for name in ("names", "adaptations", "seeds", "label_fractions"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"decoders.{name} repeats a value: {values}")


@dataclass
class ProbeConfig:
    """``geosane probe``: which models, which data and task, how to probe, where to write."""

    data: DataSpec
    models: list[ModelSpec]
    task: TaskName = "classification"
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    decoders: DecoderSettings = field(default_factory=DecoderSettings)
    # temporal stacks [N, T, C, H, W]: how single-image backbones aggregate over T (analysis.temporal)
    temporal: TemporalSettings = field(default_factory=TemporalSettings)
    output_dir: Path = Path("outputs/probe")
    cache_dir: Path | None = None
    batch_size: int = 64
    device: str = "auto"
    threads: int | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("'models' must list at least one model")

    @property
    def feature_cache(self) -> Path:
        return self.cache_dir if self.cache_dir is not None else self.output_dir / "feature_cache"


@dataclass
class CkaConfig:
    """``geosane cka``: two models on the same inputs, their layers, the estimator and the output."""

    model_a: ModelSpec
    model_b: ModelSpec
    data: DataSpec
    split: Literal["train", "select", "test"] = "test"
    estimator: CkaEstimator = "minibatch"
    pooling: Pooling = "flatten"
    # temporal stacks: single-image models run per frame and their layer outputs are averaged over T
    temporal: TemporalSettings = field(default_factory=TemporalSettings)
    batch_size: int = 64
    output_dir: Path = Path("outputs/cka")
    device: str = "auto"
    threads: int | None = None
    progress: bool = True
