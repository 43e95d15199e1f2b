"""Configuration schema of the weight-space autoencoder and its training.

A config has four sections: ``model`` (sizes of :class:`~geosane.autoencoder.model.WeightAutoencoder`),
``loss`` (reconstruction normalisation, contrastive views), ``data`` (token store, windows, held-out
models) and ``train`` (optimiser, schedule, precision, checkpoints, distribution). Presets ship in
``geosane/configs/autoencoder/`` (``tiny``, ``small``, ``paper``); a user config names one under
``base:`` and overrides what it needs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from geosane.config import find_config, load_config, to_dict
from geosane.errors import ConfigError

__all__ = [
    "PRESETS",
    "AutoencoderConfig",
    "DataConfig",
    "LossConfig",
    "ModelConfig",
    "TrainConfig",
    "load_autoencoder_config",
    "preset_path",
]

PRESETS = ("tiny", "small", "paper")

PositionEncoding = Literal["learned", "sinusoidal", "hybrid"]


@dataclass
class ModelConfig:
    """Sizes of the autoencoder (encoder and decoder are mirrored, ``n_layers`` blocks each)."""

    # token size: None = the token store's (training sets it from data.store; a model built without
    # a store, e.g. to count parameters, uses geosane.tokens.DEFAULT_TOKEN_SIZE); set, it must agree
    d_t: int | None = None
    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    lat_dim: int = 32
    window: int = 64  # tokens per training window (also the projection head's input length)
    # Position (n, l, k). ``n_index``: "window" = index inside the window (default, generalises to
    # any model length), "global" = the token's index in the whole model (the paper), "none".
    n_index: Literal["window", "global", "none"] = "window"
    position_encoding: PositionEncoding = "hybrid"  # hybrid = sinusoid + learned table where it reaches
    max_n: int = 4096  # learned-table rows for n in "global" mode (window mode uses ``window``)
    max_layers: int = 1024  # learned-table rows for l
    max_chunks: int = 4096  # learned-table rows for k
    num_layer_types: int = 16
    proj_hidden: int = 256
    proj_dim: int = 30
    dropout: float = 0.0
    attention: Literal["sdpa", "math"] = "sdpa"  # "math" = explicit softmax(QK^T)V (for benchmarks)

    def __post_init__(self) -> None:
        for name in ("d_t", "d_model", "n_heads", "n_layers", "lat_dim", "window", "proj_dim", "proj_hidden"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"model.d_model ({self.d_model}) must be divisible by model.n_heads ({self.n_heads})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout must be in [0, 1), got {self.dropout}")


@dataclass
class LossConfig:
    """Reconstruction normalisation and the contrastive term."""

    gamma: float = 0.05  # total = gamma * contrastive + (1 - gamma) * reconstruction
    temperature: float = 0.1
    normalize: Literal["batch", "token", "layer"] = "batch"  # groups whose mean/std normalise the loss
    std_floor: float = 1e-4  # a group's variance is at least std_floor * the training store's variance
    multiplicative_noise: float = 0.1  # view = x * (1 + m * eps) + a * eps'
    additive_noise: float = 1e-3
    permutation_variants: int = 0  # >0: the second view comes from one of K permuted copies of the model

    def __post_init__(self) -> None:
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"loss.gamma must be in [0, 1], got {self.gamma}")
        if self.temperature <= 0:
            raise ValueError(f"loss.temperature must be > 0, got {self.temperature}")
        if self.multiplicative_noise < 0 or self.additive_noise < 0 or self.permutation_variants < 0:
            raise ValueError("loss noise scales and permutation_variants must be >= 0")


@dataclass
class DataConfig:
    """Which token store to train on and how windows are drawn."""

    store: Path | None = None
    batch_size: int = 16
    val_fraction: float = 0.2  # share of MODELS held out for validation (split by model, never by window)
    val_models: list[str] = field(default_factory=list)  # explicit held-out model ids (overrides the fraction)
    split_seed: int = 0
    num_workers: int = 0
    permuted_cache: Path | None = None  # where permuted variants are tokenized (default: next to the store)

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"data.val_fraction must be in [0, 1), got {self.val_fraction}")


@dataclass
class TrainConfig:
    """Optimiser, schedule, precision, checkpoints and distribution."""

    out: Path = Path("runs/autoencoder")
    max_steps: int = 1000  # optimizer steps (after gradient accumulation)
    lr: float = 1e-3  # OneCycleLR peak
    weight_decay: float = 0.01  # applied to >= 2-D parameters only
    pct_start: float = 0.3
    div_factor: float = 25.0
    final_div_factor: float = 1e4
    betas: tuple[float, float] = (0.9, 0.95)
    accumulate: int = 1  # micro-batches per optimizer step
    clip_grad_norm: float | None = 1.0
    precision: str = "auto"  # auto | 32-true | bf16-mixed | 16-mixed | ...
    compile: bool = False  # torch.compile the autoencoder
    fused_optimizer: Literal["auto", "fused", "foreach", "loop"] = "auto"  # AdamW implementation
    threads: int | None = None  # CPU intra-op threads (None: torch default)
    seed: int = 0
    ckpt_every: int = 200  # optimizer steps between checkpoints
    keep_checkpoints: int = 2
    val_every: int = 200  # optimizer steps between validations
    log_every: int = 10
    progress: bool = True
    init_from: Path | None = None  # fine-tune: start from this autoencoder (.safetensors or .ckpt)
    accelerator: str = "auto"
    devices: Any = 1  # int, list of ids or "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | fsdp | deepspeed ... (Lightning strategies)

    def __post_init__(self) -> None:
        for name in ("max_steps", "accumulate", "ckpt_every", "val_every", "log_every", "num_nodes"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.pct_start < 1.0:
            raise ValueError(f"train.pct_start must be in (0, 1), got {self.pct_start}")
        for name in ("lr", "div_factor", "final_div_factor"):
            if not 0.0 < getattr(self, name) < float("inf"):
                raise ValueError(f"train.{name} must be a positive number, got {getattr(self, name)}")
        if not self.weight_decay >= 0.0:
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if not all(0.0 <= b < 1.0 for b in self.betas) or len(self.betas) != 2:
            raise ValueError(f"train.betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0.0:
            raise ValueError(f"train.clip_grad_norm must be > 0 or null, got {self.clip_grad_norm}")
        if self.keep_checkpoints < 1:
            raise ValueError(f"train.keep_checkpoints must be >= 1, got {self.keep_checkpoints}")


@dataclass
class AutoencoderConfig:
    """Everything ``geosane train`` needs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def preset_path(name: str) -> Path:
    """Path of a packaged preset (``tiny``, ``small``, ``paper``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown autoencoder preset '{name}' (choose one of {', '.join(PRESETS)})")
    return find_config(name, "autoencoder")


def load_autoencoder_config(
    path: str | Path | None = None, overrides: list[str] | dict[str, Any] | tuple[str, ...] = ()
) -> AutoencoderConfig:
    """Compose a YAML config (or a preset name such as ``small``) with ``key=value`` overrides."""
    return load_config(AutoencoderConfig, find_config(path, "autoencoder") if path is not None else None, overrides)
