"""Task heads over fused per-scale maps, and the trainable SatDiFuser model (fuser + head).

- :class:`ClassificationHead`: scales resized to the largest, summed, globally pooled, one linear
  layer; the same head serves single-label (softmax cross-entropy) and multi-label (sigmoid BCE)
  classification, only the loss and metric differ.
- :class:`SegmentationHead`: ``geosane.tasks.UPerNetHead`` (pyramid pooling 1/2/3/6 + FPN, 512
  channels by default) with logits upsampled to the mask size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from geosane.difuser.config import DecoderConfig
from geosane.difuser.fusers import Fuser, StreamLayout
from geosane.tasks import UPerNetHead

__all__ = ["ClassificationHead", "DifuserModel", "SegmentationHead", "build_head"]


class ClassificationHead(nn.Module):
    """Resize every scale to the finest, sum, global average pool, dropout, linear."""

    def __init__(self, width: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(width, num_classes)

    def forward(self, maps: Sequence[torch.Tensor], output_size: tuple[int, int] | None = None) -> torch.Tensor:
        size = maps[0].shape[-2:]
        total = cast(
            torch.Tensor,
            sum(
                m if m.shape[-2:] == size else F.interpolate(m, size=size, mode="bilinear", align_corners=False)
                for m in maps
            ),
        )
        return self.linear(self.dropout(total.mean(dim=(2, 3))))


class SegmentationHead(nn.Module):
    """UPerNet over the fused scales (finest first); logits resized to ``output_size``."""

    def __init__(
        self,
        width: int,
        num_scales: int,
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
    ) -> None:
        super().__init__()
        self.upernet = UPerNetHead([width] * num_scales, num_classes, channels, tuple(pool_scales))

    def forward(self, maps: Sequence[torch.Tensor], output_size: tuple[int, int] | None = None) -> torch.Tensor:
        logits = self.upernet(list(maps))
        if output_size is not None and tuple(logits.shape[-2:]) != tuple(output_size):
            logits = F.interpolate(logits, size=tuple(output_size), mode="bilinear", align_corners=False)
        return logits


def build_head(config: DecoderConfig, width: int, num_scales: int, num_classes: int) -> nn.Module:
    """``linear`` classification head or ``upernet`` segmentation head."""
    if config.name == "linear":
        return ClassificationHead(width, num_classes, config.dropout)
    return SegmentationHead(width, num_scales, num_classes, config.channels, config.pool_scales)


class DifuserModel(nn.Module):
    """Fuser + head on cached diffusion features (a dict keyed ``t{timestep}/{layer}``)."""

    def __init__(self, fuser: Fuser, head: nn.Module, output_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.fuser = fuser
        self.head = head
        self.output_size = output_size

    @property
    def layout(self) -> StreamLayout:
        return self.fuser.layout

    def forward(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        maps = self.fuser(self.layout.assemble(features))
        return self.head(maps, self.output_size)

    def aux_loss(self) -> torch.Tensor:
        """Auxiliary loss of the last forward pass (the MoE load-balancing term), to add to the task loss."""
        return self.fuser.aux_loss()
