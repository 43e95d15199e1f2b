"""timm's classifier API for geosane's own class-token ViT encoders (Prithvi, SatMAE).

timm's ``reset_classifier`` / ``forward_head`` are what geosane's task code calls on a backbone;
these encoders are not timm ``VisionTransformer``\\ s (a tubelet or band-group embedding), so they
share this one small mixin instead of each writing the same methods.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["ClassTokenHead"]


class ClassTokenHead(nn.Module):
    """``head`` on the class token of ``forward_features``' tokens; ``embed_dim`` wide."""

    embed_dim: int
    num_classes: int
    head: nn.Module

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: Any = None) -> None:
        self.num_classes = int(num_classes)
        self.head = nn.Linear(self.embed_dim, self.num_classes) if self.num_classes else nn.Identity()

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        pooled = x[:, 0]
        if pre_logits:
            return pooled
        out: torch.Tensor = self.head(pooled)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
