"""Temporal image stacks ``[N, T, C, H, W]`` in probing, decoders and CKA.

A backbone meets a stack in one of two ways:

- **natively temporal**: the module has an int attribute ``temporal_frames`` and takes
  ``[B, T, C, H, W]`` itself (e.g. Prithvi); it gets the whole stack, ``T`` must equal
  ``temporal_frames``, and ``temporal.aggregation`` does not apply to it;
- **single-image**: it runs on every frame (``[B * T, C, H, W]``) and the per-frame features are
  aggregated over ``T`` as ``temporal.aggregation`` says: ``mean`` (parameter-free, so cached
  features and the closed-form probes work unchanged) or ``ltae`` (:class:`LTAE`, attention over the
  frames trained jointly with the probe or decoder head; per pixel on feature maps).

:func:`frames_per_model` makes that decision once per model and data, with the errors of bad input
(single images for a temporal model, a stack of another length, an aggregation for single images,
a stack for a single-image model without an aggregation) before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, cast

import torch
from torch import nn

from geosane.errors import ConfigError, GeosaneError

__all__ = [
    "LTAE",
    "TEMPORAL_AGGREGATIONS",
    "FrameBackbone",
    "TemporalDecoder",
    "TemporalSettings",
    "check_temporal_settings",
    "frames_per_model",
    "temporal_frames",
    "temporal_task_model",
]

Aggregation = Literal["mean", "ltae"]
TEMPORAL_AGGREGATIONS: tuple[str, ...] = ("mean", "ltae")


@dataclass
class TemporalSettings:
    """``temporal:`` in a config: how single-image backbones see temporal stacks.

    ``aggregation``: ``mean`` or ``ltae`` over the frames' features (None: the data must be single
    images, or every model natively temporal). ``heads`` / ``key_dim``: the L-TAE's attention heads
    and the width of their keys.
    """

    aggregation: Aggregation | None = None
    heads: int = 4
    key_dim: int = 8

    def __post_init__(self) -> None:
        if self.aggregation is not None and self.aggregation not in TEMPORAL_AGGREGATIONS:
            raise ValueError(
                f"temporal.aggregation must be one of {', '.join(TEMPORAL_AGGREGATIONS)} (or null), "
                f"got {self.aggregation!r}"
            )
        if self.heads < 1 or self.key_dim < 1:
            raise ValueError(
                f"temporal.heads and temporal.key_dim must be positive, got {self.heads}, {self.key_dim}"
            )


def temporal_frames(model: nn.Module) -> int | None:
    """The frames a natively temporal model takes (its ``temporal_frames``), None for others."""
    value = getattr(model, "temporal_frames", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _describe(images: torch.Tensor) -> str:
    if images.ndim == 5:
        return f"temporal stacks of {images.shape[1]} frames [N, T, C, H, W] = {list(images.shape)}"
    return f"single images [N, C, H, W] = {list(images.shape)}"


def check_temporal_settings(settings: TemporalSettings, images: torch.Tensor) -> None:
    """An aggregation is for temporal stacks: refuse it on single images (a config mistake)."""
    if settings.aggregation is not None and images.ndim != 5:
        raise ConfigError(
            f"temporal.aggregation={settings.aggregation} aggregates temporal stacks [N, T, C, H, W], but the "
            f"data holds {_describe(images)}; remove temporal.aggregation (or read a time series with "
            "data.time_steps)"
        )


def frames_per_model(
    name: str, model: nn.Module, images: torch.Tensor, settings: TemporalSettings
) -> int | None:
    """How ``model`` takes ``images``: the frames to run one by one (then aggregate), or None when
    it takes the batch as it is (single images, or a natively temporal model on its stacks)."""
    check_temporal_settings(settings, images)
    native = temporal_frames(model)
    frames = int(images.shape[1]) if images.ndim == 5 else None
    if native is not None:
        if frames is None:
            raise ConfigError(
                f"model '{name}' is natively temporal: it takes stacks of {native} frames [B, {native}, C, H, W], "
                f"but the data holds {_describe(images)}; give it a time series (data.time_steps: {native})"
            )
        if frames != native:
            raise ConfigError(
                f"model '{name}' takes stacks of {native} frames (temporal_frames), but the data's stacks have "
                f"{frames}; set data.time_steps: {native}"
            )
        return None
    if frames is None:
        return None
    if settings.aggregation is None:
        raise ConfigError(
            f"model '{name}' takes single images [B, C, H, W], but the data holds {_describe(images)}; set "
            "temporal.aggregation (mean or ltae) to run it on every frame and aggregate over time"
        )
    return frames


def _sinusoid(frames: int, channels: int) -> torch.Tensor:
    """Transformer positional encoding of frame positions 0..frames-1 (``[frames, channels]``)."""
    position = torch.arange(frames, dtype=torch.float32)[:, None]
    scale = torch.exp(torch.arange(0, channels, 2, dtype=torch.float32) * (-math.log(1000.0) / channels))
    table = torch.zeros(frames, channels)
    table[:, 0::2] = torch.sin(position * scale)
    table[:, 1::2] = torch.cos(position * scale[: channels // 2])
    return table


class LTAE(nn.Module):
    """Lightweight Temporal Attention Encoder, after Garnot & Landrieu (2020), "Lightweight Temporal
    Self-Attention for Classifying Satellite Images Time Series" (arXiv:2007.00586).

    Frame features ``[B, T, D]`` -> one vector ``[B, D]``. Each of ``heads`` heads has a learned
    *master query* (instead of one query per frame as in self-attention); keys come from the
    normalised, position-encoded frame features, and each head attends over the ``T`` frames with
    its own group of ``D / heads`` channels as values, so the output keeps the width ``D`` and the
    module stays small (``D * heads * key_dim`` key weights). The frame index stands in for the
    acquisition date of the paper's positional encoding. :meth:`forward_map` applies it to every
    pixel of feature maps ``[B, T, D, h, w]``. ``heads`` is lowered to the largest divisor of ``D``.
    """

    def __init__(self, channels: int, frames: int, heads: int = 4, key_dim: int = 8) -> None:
        super().__init__()
        heads = max(h for h in range(1, min(heads, channels) + 1) if channels % h == 0)
        self.channels, self.frames, self.heads, self.key_dim = channels, frames, heads, key_dim
        self.norm = nn.LayerNorm(channels)
        self.register_buffer("position", _sinusoid(frames, channels), persistent=False)
        self.keys = nn.Linear(channels, heads * key_dim)
        self.queries = nn.Parameter(torch.randn(heads, key_dim) * key_dim**-0.5)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The heads' weights over the frames, ``[B, heads, T]`` (each row sums to one)."""
        batch, frames, _ = x.shape
        if frames != self.frames:
            raise GeosaneError(f"the L-TAE was built for {self.frames} frames, got {frames}")
        z = self.norm(x) + cast(torch.Tensor, self.position)
        keys = self.keys(z).view(batch, frames, self.heads, self.key_dim)
        scores = torch.einsum("bthk,hk->bht", keys, self.queries) / math.sqrt(self.key_dim)
        return scores.softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, channels = x.shape
        weights = self.attention(x)
        values = (self.norm(x) + cast(torch.Tensor, self.position)).view(
            batch, frames, self.heads, channels // self.heads
        )
        return torch.einsum("bht,bthc->bhc", weights, values).reshape(batch, channels)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """Per pixel: ``[B, T, D, h, w]`` -> ``[B, D, h, w]``."""
        batch, frames, channels, height, width = x.shape
        pixels = x.permute(0, 3, 4, 1, 2).reshape(batch * height * width, frames, channels)
        return self.forward(pixels).view(batch, height, width, channels).permute(0, 3, 1, 2)


def aggregate(x: torch.Tensor, aggregator: LTAE | None) -> torch.Tensor:
    """Per-frame features ``[B, T, ...]`` -> ``[B, ...]``: the mean over T, or the L-TAE (vectors or
    maps)."""
    if aggregator is None:
        return x.mean(dim=1)
    return aggregator.forward_map(x) if x.ndim == 5 else aggregator.forward(x)


class FrameBackbone(nn.Module):
    """A feature backbone run on every frame: ``[B, T, C, H, W]`` -> per level ``[B, T, C_i, h_i, w_i]``."""

    def __init__(self, backbone: nn.Module, frames: int) -> None:
        super().__init__()
        self.inner = backbone
        self.frames = frames
        self.feature_info = getattr(backbone, "feature_info", None)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 5 or x.shape[1] != self.frames:
            raise GeosaneError(f"expected stacks [B, {self.frames}, C, H, W], got {tuple(x.shape)}")
        levels = self.inner(x.flatten(0, 1))
        return [level.unflatten(0, (x.shape[0], self.frames)) for level in levels]


class TemporalDecoder(nn.Module):
    """Aggregates every feature level over the frames (mean, or one :class:`LTAE` per level, per
    pixel), then runs the decoder head. Part of the head: trained with it even on a frozen backbone."""

    def __init__(
        self, decoder: nn.Module, channels: Sequence[int], frames: int, settings: TemporalSettings
    ) -> None:
        super().__init__()
        self.decoder = decoder
        self.aggregators: nn.ModuleList | None = None
        if settings.aggregation == "ltae":
            self.aggregators = nn.ModuleList(
                LTAE(c, frames, settings.heads, settings.key_dim) for c in channels
            )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        if self.aggregators is None:
            merged = [aggregate(level, None) for level in features]
        else:
            merged = [
                aggregate(level, cast(LTAE, a)) for level, a in zip(features, self.aggregators, strict=True)
            ]
        return cast(torch.Tensor, self.decoder(merged))


def temporal_task_model(model: nn.Module, frames: int, settings: TemporalSettings, name: str) -> nn.Module:
    """A segmenter / regressor (``backbone`` + ``decoder``) made to take stacks of ``frames`` frames:
    its backbone runs per frame and its decoder aggregates first (:class:`TemporalDecoder`)."""
    backbone = getattr(model, "backbone", None)
    decoder = getattr(model, "decoder", None)
    info = getattr(backbone, "feature_info", None)
    if not isinstance(backbone, nn.Module) or not isinstance(decoder, nn.Module) or info is None:
        raise ConfigError(
            f"model '{name}': temporal.aggregation runs a timm backbone per frame under a geosane decoder; "
            f"{type(model).__name__} (e.g. an smp segmenter with its own decoder) cannot be aggregated over time"
        )
    channels = [int(c) for c in info.channels()]
    model.backbone = FrameBackbone(backbone, frames)
    model.decoder = TemporalDecoder(decoder, channels, frames, settings)
    return model
