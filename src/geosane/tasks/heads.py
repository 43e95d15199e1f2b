"""Dense-prediction decoder heads over a list of backbone feature maps.

Every head takes ``features``: a list of ``[B, C_i, H_i, W_i]`` maps ordered from the finest to the
coarsest (as timm feature extractors return them; equal strides, as in a plain ViT, are fine) and
returns logits at the finest feature resolution. :class:`geosane.tasks.SegmentationModel` upsamples
them to the input size.

- :class:`LinearSegHead`: a per-pixel linear probe (non-affine BatchNorm + 1x1 conv) on all levels
  upsampled to the finest one.
- :class:`UNetDecoder`: top-down upsampling with skip concatenation and two 3x3 convs per level.
- :class:`UPerNetHead`: pyramid pooling (1, 2, 3, 6) on the coarsest level plus an FPN, fused
  (Xiao et al. 2018), as used by SatDiFuser and most GeoFM benchmarks.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DECODERS", "LinearSegHead", "UNetDecoder", "UPerNetHead", "build_decoder"]


def _conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class LinearSegHead(nn.Module):
    """Per-pixel linear classifier on concatenated, upsampled features (MAE-style BN in front)."""

    def __init__(self, in_channels: Sequence[int], num_classes: int) -> None:
        super().__init__()
        total = int(sum(in_channels))
        self.norm = nn.BatchNorm2d(total, affine=False)
        self.classifier = nn.Conv2d(total, num_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        size = features[0].shape[-2:]
        x = torch.cat([_resize(f, size) for f in features], dim=1)
        return self.classifier(self.norm(x))


class UNetDecoder(nn.Module):
    """U-Net style decoder: from the coarsest level up, upsample, concatenate the skip, two convs."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 64) -> None:
        super().__init__()
        in_channels = list(in_channels)
        self.bottleneck = _conv_bn_relu(in_channels[-1], channels)
        self.blocks = nn.ModuleList(
            nn.Sequential(_conv_bn_relu(channels + c, channels), _conv_bn_relu(channels, channels))
            for c in reversed(in_channels[:-1])
        )
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        x = self.bottleneck(features[-1])
        for block, skip in zip(self.blocks, reversed(features[:-1]), strict=True):
            x = block(torch.cat([_resize(x, skip.shape[-2:]), skip], dim=1))
        return self.classifier(x)


class UPerNetHead(nn.Module):
    """UPerNet: pyramid pooling module on the coarsest level, FPN top-down path, fusion of all levels."""

    def __init__(
        self,
        in_channels: Sequence[int],
        num_classes: int,
        channels: int = 128,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
    ) -> None:
        super().__init__()
        in_channels = list(in_channels)
        self.ppm = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), _conv_bn_relu(in_channels[-1], channels, 1))
            for scale in pool_scales
        )
        self.ppm_fuse = _conv_bn_relu(in_channels[-1] + len(pool_scales) * channels, channels)
        self.lateral = nn.ModuleList(_conv_bn_relu(c, channels, 1) for c in in_channels[:-1])
        self.fpn = nn.ModuleList(_conv_bn_relu(channels, channels) for _ in in_channels[:-1])
        self.fuse = _conv_bn_relu(len(in_channels) * channels, channels)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        top = features[-1]
        pooled = [_resize(branch(top), top.shape[-2:]) for branch in self.ppm]
        laterals = [lat(f) for lat, f in zip(self.lateral, features[:-1], strict=True)]
        laterals.append(self.ppm_fuse(torch.cat([top, *pooled], dim=1)))
        for i in range(len(laterals) - 1, 0, -1):  # top-down path
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(x) for conv, x in zip(self.fpn, laterals[:-1], strict=True)] + [laterals[-1]]
        size = outs[0].shape[-2:]
        return self.classifier(self.fuse(torch.cat([_resize(o, size) for o in outs], dim=1)))


DECODERS = {"linear": LinearSegHead, "unet": UNetDecoder, "upernet": UPerNetHead}


def build_decoder(
    name: str, in_channels: Sequence[int], num_classes: int, channels: int | None = None
) -> nn.Module:
    """Decoder ``name`` (``linear`` | ``unet`` | ``upernet``) for the given feature channels."""
    if name not in DECODERS:
        raise ValueError(f"unknown decoder '{name}' (choose from {', '.join(DECODERS)})")
    if name == "linear":
        return LinearSegHead(in_channels, num_classes)
    kwargs = {"channels": channels} if channels else {}
    return DECODERS[name](in_channels, num_classes, **kwargs)
