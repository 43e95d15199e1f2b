"""The training budget, importable without torch (configs are validated before heavy imports).

:class:`TrainingBudget` is the one definition of the budget section every trained thing shares
(epochs, batch size, learning rate, weight decay, warm-up): :class:`FitConfig` (downstream
``train:``, probing ``fit:``), the zoo recipe's ``defaults`` (:class:`geosane.zoo.recipe.TrainSettings`)
and SatDiFuser's ``train:`` (:class:`geosane.difuser.config.TrainConfig`) extend it with their own
fields and defaults, so the YAML keys stay flat (``train.epochs``) and are validated by one rule.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = ["FitConfig", "TrainingBudget"]


@dataclass
class TrainingBudget:
    """Epochs, batch size and the optimiser's schedule (AdamW, linear warm-up then cosine)."""

    # how errors name a field: "train.epochs" in a config's train section, "epochs" in a zoo recipe
    key_prefix: ClassVar[str] = "train."

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0

    def __post_init__(self) -> None:
        key = self.key_prefix
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{key}{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.lr < float("inf"):
            raise ValueError(f"{key}lr must be a positive number, got {self.lr}")
        for name in ("weight_decay", "warmup_epochs"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{key}{name} must be >= 0, got {getattr(self, name)}")

    def budget(self) -> dict[str, Any]:
        """The :class:`TrainingBudget` fields alone (``FitConfig(**settings.budget(), seed=...)``)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(TrainingBudget)}


@dataclass
class FitConfig(TrainingBudget):
    """Fine-tuning budget and optimisation settings (identical across compared initialisations)."""

    backbone_lr_scale: float = 1.0
    freeze_backbone: bool = False
    label_smoothing: float = 0.0
    seed: int = 0
    num_workers: int = 0
    precision: str = "32-true"
    progress: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("backbone_lr_scale", "num_workers"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
