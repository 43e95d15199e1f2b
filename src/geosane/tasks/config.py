"""The fine-tuning budget, importable without torch (configs are validated before heavy imports)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FitConfig"]


@dataclass
class FitConfig:
    """Fine-tuning budget and optimisation settings (identical across compared initialisations)."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    backbone_lr_scale: float = 1.0
    freeze_backbone: bool = False
    label_smoothing: float = 0.0
    seed: int = 0
    num_workers: int = 0
    precision: str = "32-true"
    progress: bool = False

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.lr < float("inf"):
            raise ValueError(f"train.lr must be a positive number, got {self.lr}")
        for name in ("weight_decay", "warmup_epochs", "backbone_lr_scale", "num_workers"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")
