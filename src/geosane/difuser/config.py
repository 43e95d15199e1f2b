"""Config schemas of SatDiFuser runs (``geosane difuse``) and DDPM pretraining.

An experiment YAML lists ``base:`` files (``difuser/backbone/...``, ``difuser/fuser/...``,
``difuser/decoder/...``, ``difuser/task/...``); they are merged in order, the experiment file last,
command-line ``key=value`` overrides after that (see :mod:`geosane.config`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from geosane.config import find_config, load_config
from geosane.errors import ConfigError
from geosane.tasks.config import TrainingBudget

__all__ = [
    "BackboneConfig",
    "ConditioningConfig",
    "DecoderConfig",
    "DifuseConfig",
    "FuserConfig",
    "PretrainConfig",
    "SatelliteMetadata",
    "TaskConfig",
    "TrainConfig",
    "load_difuse_config",
    "load_pretrain_config",
]

RESULTS_ROOT = Path("runs/difuser")  # default outputs, relative to the working directory


@dataclass
class SatelliteMetadata:
    """One image's metadata as DiffusionSat takes it (raw values; geosane applies DiffusionSat's scaling).

    ``longitude`` / ``latitude`` in degrees, ``gsd`` in metres per pixel, ``cloud_cover`` a fraction
    (0.25 = 25 %), the acquisition date as ``year`` / ``month`` / ``day``. Every field is needed by a
    DiffusionSat UNet; a missing one is an error naming it.
    """

    longitude: float | None = None
    latitude: float | None = None
    gsd: float | None = None
    cloud_cover: float | None = None
    year: int | None = None
    month: int | None = None
    day: int | None = None

    def missing(self) -> list[str]:
        return [name for name, value in vars(self).items() if value is None]


@dataclass
class ConditioningConfig:
    """Optional conditioning of a ``UNet2DConditionModel``, a class-conditioned UNet or DiffusionSat's SatUNet.

    - ``prompt``: encoded once by the CLIP text encoder in ``<model_dir>/text_encoder`` (+ tokenizer;
      needs the ``transformers`` package: ``pip install geosane[difuser]``);
    - ``prompt_embedding``: a safetensors file holding ``embedding`` ``[tokens, dim]`` (a precomputed
      prompt embedding, for when the text encoder is not available);
    - ``satellite``: DiffusionSat metadata of every image (longitude, latitude, gsd, cloud_cover,
      year, month, day), scaled as DiffusionSat's ``metadata_normalize`` does;
    - ``metadata_file``: a CSV with one row per image (column ``image``: the path relative to
      ``task.root``, then the ``satellite`` fields), for per-image DiffusionSat metadata;
    - ``metadata``: numbers fed as they are: to a SatUNet's metadata embedding (already normalised,
      e.g. ``[0, 0, 0, 0, 0, 0, 0]`` for DiffusionSat's null metadata), or to the UNet's class
      embedding (``class_embed_type: projection``).
    Without prompt or embedding a conditional UNet gets an all-zero (null) context. A SatUNet
    without ``satellite``, ``metadata_file`` or ``metadata`` is refused.
    """

    prompt: str | None = None
    prompt_embedding: Path | None = None
    metadata: list[float] | None = None
    satellite: SatelliteMetadata | None = None
    metadata_file: Path | None = None

    def __post_init__(self) -> None:
        if self.prompt is not None and self.prompt_embedding is not None:
            raise ValueError("give either conditioning.prompt or conditioning.prompt_embedding, not both")
        if self.metadata is not None and self.satellite is not None:
            raise ValueError(
                "give either conditioning.metadata (normalised numbers) or conditioning.satellite, not both "
                "(set conditioning.metadata=null to use satellite)"
            )


@dataclass
class BackboneConfig:
    """The frozen diffusion UNet and how its features are taken.

    ``layer_idxs`` selects hooked layers by name or glob (``up1_res*``, ``up2_attn0``; ``geosane difuse
    layers MODEL_DIR`` lists them): ``up{L}_res{R}`` is ResNet ``conv2`` of repeat R in up-block L,
    ``up{L}_attn{R}`` the self-attention (``attn1``) output there. ``save_timesteps`` are values of the
    DDIM schedule of ``num_timesteps`` steps. ``unet_dir``: the UNet's own directory when it is not
    ``model_dir/unet`` (DiffusionSat's training output keeps it in ``checkpoint-<step>/unet``); the
    VAE, scheduler and text encoder still come from ``model_dir``.
    """

    model_dir: Path | None = None
    unet_dir: Path | None = None
    image_size: int = 64
    num_timesteps: int = 50
    save_timesteps: list[int] = field(default_factory=lambda: [1, 21, 41])
    diffusion_mode: Literal["inversion", "generation"] = "inversion"
    layer_idxs: list[str] = field(default_factory=lambda: ["up*_res*", "up*_attn*"])
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    seed: int = 0
    batch_size: int = 32
    cache_dtype: Literal["float16", "float32"] = "float16"

    def __post_init__(self) -> None:
        if self.image_size <= 0 or self.num_timesteps <= 0 or self.batch_size <= 0:
            raise ValueError("backbone.image_size, num_timesteps and batch_size must be positive")
        if not self.save_timesteps:
            raise ValueError("backbone.save_timesteps must name at least one timestep")
        if not self.layer_idxs:
            raise ValueError("backbone.layer_idxs must select at least one layer")


@dataclass
class FuserConfig:
    """Fusion of the (timestep, layer) feature streams.

    ``group: scale`` concatenates layers of the same spatial size into one stream per scale (the
    method's layout); ``group: layer`` keeps every hooked layer a stream of its own.

    MoE: ``moe_variant: reference`` (default) is shaped like SatDiFuser's code (bottleneck-projector
    experts on the raw per-scale features, KL-to-uniform usage balance); ``projected`` is geosane's
    first variant (per-stream projectors, then pointwise-MLP experts, Switch balance).
    ``balance_loss: auto`` takes the variant's own term; ``usage_kl`` / ``switch`` choose one.
    """

    name: Literal["gw", "lw", "moe"] = "gw"
    width: int = 384
    group: Literal["scale", "layer"] = "scale"
    num_experts: int = 8
    top_k: int = 2
    warmup_steps: int = 200
    balance_weight: float = 0.01
    temperature: float = 1.0
    moe_variant: Literal["reference", "projected"] = "reference"
    balance_loss: Literal["auto", "usage_kl", "switch"] = "auto"

    def __post_init__(self) -> None:
        if self.width <= 0 or self.width % 4:
            raise ValueError(f"fuser.width must be a positive multiple of 4, got {self.width}")
        if self.num_experts <= 0 or self.top_k <= 0:
            raise ValueError("fuser.num_experts and fuser.top_k must be positive")
        if self.name == "moe" and self.top_k > self.num_experts:
            raise ValueError(
                f"fuser.top_k ({self.top_k}) is larger than fuser.num_experts ({self.num_experts})"
            )
        if self.warmup_steps < 0 or self.balance_weight < 0 or self.temperature <= 0:
            raise ValueError("fuser.warmup_steps and balance_weight must be >= 0, temperature > 0")


@dataclass
class DecoderConfig:
    """Task head: ``linear`` (classification) or ``upernet`` (segmentation)."""

    name: Literal["linear", "upernet"] = "linear"
    channels: int = 512
    pool_scales: list[int] = field(default_factory=lambda: [1, 2, 3, 6])
    dropout: float = 0.0


@dataclass
class TaskConfig:
    """Labelled data: an image folder (classification), csmask scenes (segmentation) or a TorchGeo
    dataset by name (``dataset: torchgeo``, ``name: EuroSAT``: its own train / val / test splits as
    train / select / test, each capped by ``max_samples``; classification, multi-label or segmentation).

    Splits are ``geosane.data.stratified_split`` (train / select / test); for csmask whole scenes
    are kept apart with ``train_scenes`` (those scenes train, the other scenes' chips are split into
    select / test), otherwise chips are split per scene at random (seeded). ``bands`` picks the
    channels fed to an RGB diffusion model; ``max_per_class`` caps samples per class (or per scene).
    """

    kind: Literal["classification", "multilabel", "segmentation"] = "classification"
    dataset: Literal["image_folder", "csmask", "torchgeo"] = "image_folder"
    root: Path | None = None
    # dataset: torchgeo: the dataset (geosane.data.TORCHGEO_DATASETS or a torchgeo.datasets class),
    # whether TorchGeo may download it into root, constructor arguments, and a cap per split
    name: str | None = None
    download: bool = False
    dataset_kwargs: dict[str, Any] = field(default_factory=dict)
    max_samples: int | None = None
    bands: list[int] | None = None
    ignore_index: int = 255
    split_seed: int = 0
    fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.6, "select": 0.1, "test": 0.3})
    max_per_class: int | None = None
    chip_size: int = 64
    train_scenes: list[str] | None = None


@dataclass
class TrainConfig(TrainingBudget):
    """Fuser + head optimisation (Adam, linear warm-up then cosine, early stopping on ``select``)."""

    epochs: int = 30
    lr: float = 0.01
    weight_decay: float = 0.0
    warmup_epochs: float = 5.0
    patience: int = 8
    seed: int = 0
    num_workers: int = 0
    progress: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.patience < 1:
            raise ValueError(f"train.patience must be >= 1, got {self.patience}")


@dataclass
class DifuseConfig:
    """One SatDiFuser experiment: backbone + fuser + decoder + task + training.

    ``num_threads`` sets torch's CPU threads (1 is much faster on an oversubscribed machine).
    ``seeds``: a seed sweep (``geosane.difuser.sweep``): one run per training seed in
    ``output_dir/seed<k>/`` and a mean ± std table over them.
    """

    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fuser: FuserConfig = field(default_factory=FuserConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output_dir: Path = RESULTS_ROOT / "run"
    cache_dir: Path = RESULTS_ROOT / "feature-cache"
    device: str = "cpu"
    num_threads: int | None = None
    seeds: list[int] | None = None

    def __post_init__(self) -> None:
        if self.seeds is not None and (not self.seeds or len(set(self.seeds)) != len(self.seeds)):
            raise ValueError(f"seeds must list distinct training seeds, got {self.seeds}")
        if self.task.kind == "segmentation" and self.decoder.name != "upernet":
            raise ValueError("task.kind segmentation needs decoder.name upernet")
        if self.task.kind != "segmentation" and self.decoder.name != "linear":
            raise ValueError(f"task.kind {self.task.kind} needs decoder.name linear")


@dataclass
class PretrainConfig:
    """A small pixel-space DDPM (diffusers ``UNet2DModel``) trained on an unlabeled image folder.

    ``split: train`` uses only the training split of ``geosane.data.stratified_split`` (same seed
    and fractions as the downstream task), so the DDPM never sees select or test images.
    ``num_threads`` sets torch's CPU threads.
    """

    data_root: Path | None = None
    split: Literal["train", "all"] = "train"
    split_seed: int = 0
    fractions: dict[str, float] = field(default_factory=lambda: {"train": 0.6, "select": 0.1, "test": 0.3})
    image_size: int = 32
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    attention_levels: list[int] = field(default_factory=lambda: [1, 2])
    layers_per_block: int = 1
    norm_num_groups: int = 8
    attention_head_dim: int = 16
    num_train_timesteps: int = 1000
    beta_schedule: Literal["linear", "scaled_linear", "squaredcos_cap_v2"] = "linear"
    steps: int = 2000
    batch_size: int = 32
    lr: float = 3e-4
    warmup_steps: int = 100
    ema_decay: float = 0.999
    checkpoint_every: int = 250
    num_samples: int = 16
    seed: int = 0
    output_dir: Path = RESULTS_ROOT / "ddpm"
    device: str = "cpu"
    num_threads: int | None = None

    def __post_init__(self) -> None:
        levels = len(self.block_out_channels)
        if levels < 2:
            raise ValueError("pretrain.block_out_channels needs at least two levels")
        bad = [a for a in self.attention_levels if not 0 <= a < levels]
        if bad:
            raise ValueError(f"attention_levels {bad} out of range for {levels} levels")
        if self.image_size % 2 ** (levels - 1):
            raise ValueError(f"image_size {self.image_size} must be divisible by {2 ** (levels - 1)}")
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ValueError("every block_out_channels value must be divisible by norm_num_groups")
        if self.steps <= 0 or self.batch_size <= 0 or self.checkpoint_every <= 0:
            raise ValueError("steps, batch_size and checkpoint_every must be positive")


def apply_threads(num_threads: int | None) -> None:
    """Set torch's intra-op CPU threads when a config asks for a number (inside a stage that
    :func:`geosane.runs.keeps_torch_threads` puts back when it ends)."""
    if num_threads is not None:
        import torch

        torch.set_num_threads(max(int(num_threads), 1))


def load_difuse_config(path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()) -> DifuseConfig:
    """Compose and validate an experiment config (``base:`` files, then the file, then overrides).

    ``path`` is a file, or a config shipped in ``geosane/configs``: ``difuser/rsscn7_gw.yaml``,
    ``rsscn7_gw``.
    """
    cfg = load_config(DifuseConfig, find_config(path, "difuser") if path else None, overrides)
    if cfg.backbone.model_dir is None:
        raise ConfigError("backbone.model_dir is not set (a diffusers model directory)")
    if cfg.task.root is None:
        raise ConfigError("task.root is not set (the labelled dataset folder)")
    return cfg


def load_pretrain_config(
    path: str | Path | None, overrides: list[str] | tuple[str, ...] = ()
) -> PretrainConfig:
    """Compose and validate a DDPM pretraining config (a file, or ``difuser/pretrain/ddpm_rsscn7.yaml``)."""
    cfg = load_config(PretrainConfig, find_config(path, "difuser/pretrain") if path else None, overrides)
    if cfg.data_root is None:
        raise ConfigError("data_root is not set (an image folder of unlabeled training images)")
    return cfg
