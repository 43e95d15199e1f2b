"""SatMAE's multispectral group-channel ViT (fMoW-Sentinel, 10 bands in 3 groups).

SatMAE embeds each band group with its own patch embedding (``patch_embed.N``) and gives every
token a position part (a fixed 2D sin-cos over the patch grid, ``pos_embed``, ``D - c`` channels)
and a group part (a fixed 1D sin-cos over the groups, ``channel_embed``, ``c`` channels). The
sequence is one class token then the patch tokens of group 0, group 1, ... (``1 + G*L`` tokens).
timm's ``VisionTransformer`` has one patch embedding and one position embedding, so geosane
writes the encoder here with timm's ``Block``: tensor names are SatMAE's (``cls_token``,
``pos_embed``, ``channel_embed``, ``patch_embed.N.proj``, ``blocks.N.*``, ``norm``).

The class token's group part is zeros: SatMAE's fine-tuning model creates it at zero
(``channel_cls_embed``) and its pretraining checkpoint does not hold it, so it is a constant here.
The backbone output is the normed class token (the pretraining encoder's output). The tokens do
not form one square patch grid (they are G grids in a row), so analyses that fold tokens into a
map see ``G*L`` patch tokens; pooled features are unaffected. Inputs must be ``img_size`` pixels:
the published position embedding is used as stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from geosane.arch.vit_head import ClassTokenHead
from geosane.errors import GeosaneError

__all__ = ["SATMAE_GROUPS", "SatMAEGroupChannelViT"]

# SatMAE's published grouping of the 10 kept fMoW-Sentinel bands (README: --grouped_bands)
SATMAE_GROUPS = ((0, 1, 2, 6), (3, 4, 5, 7), (8, 9))


class SatMAEGroupChannelViT(ClassTokenHead):
    """SatMAE's group-channel encoder with timm's classifier API (``forward_features``,
    ``forward_head``, ``reset_classifier``, ``num_prefix_tokens``)."""

    pos_embed: torch.Tensor
    channel_cls_embed: torch.Tensor

    def __init__(
        self,
        img_size: int = 96,
        patch_size: int = 8,
        channel_groups: Sequence[Sequence[int]] = SATMAE_GROUPS,
        embed_dim: int = 1024,
        channel_embed: int = 256,
        depth: int = 24,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        num_classes: int = 0,
        drop_path_rate: float = 0.0,
        in_chans: int | None = None,
    ) -> None:
        from timm.layers import PatchEmbed
        from timm.models.vision_transformer import Block

        super().__init__()
        self.channel_groups = [list(int(i) for i in g) for g in channel_groups]
        flat = sorted(i for g in self.channel_groups for i in g)
        if flat != list(range(len(flat))):
            raise GeosaneError(
                f"SatMAE channel_groups must cover bands 0..N-1 once each, got {self.channel_groups}"
            )
        if not 0 < channel_embed < embed_dim:
            raise GeosaneError(
                f"SatMAE channel_embed must be in (0, embed_dim={embed_dim}), got {channel_embed}"
            )
        self.in_chans = len(flat)
        if in_chans is not None and int(in_chans) != self.in_chans:
            raise GeosaneError(
                f"SatMAE's group-channel ViT takes the {self.in_chans} bands its channel_groups cover, not in_chans={in_chans}"
            )
        self.img_size, self.patch_size = int(img_size), int(patch_size)
        self.embed_dim = self.num_features = int(embed_dim)
        self.num_prefix_tokens = 1
        self.num_classes = int(num_classes)
        self.patch_embed = nn.ModuleList(
            PatchEmbed(self.img_size, self.patch_size, len(g), self.embed_dim) for g in self.channel_groups
        )
        patches = (self.img_size // self.patch_size) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.pos_embed = nn.Parameter(
            torch.zeros(1, patches + 1, self.embed_dim - channel_embed), requires_grad=False
        )
        self.channel_embed = nn.Parameter(
            torch.zeros(1, len(self.channel_groups), channel_embed), requires_grad=False
        )
        self.register_buffer("channel_cls_embed", torch.zeros(1, 1, channel_embed), persistent=False)
        norm: Any = partial(nn.LayerNorm, eps=1e-6)  # timm types norm_layer as a class
        self.blocks = nn.Sequential(
            *(
                Block(self.embed_dim, int(num_heads), mlp_ratio=float(mlp_ratio), qkv_bias=True, norm_layer=norm,
                      drop_path=drop_path_rate * i / max(depth - 1, 1))
                for i in range(int(depth))
            )
        )  # fmt: skip
        self.norm = norm(self.embed_dim)
        self.head: nn.Module = (
            nn.Linear(self.embed_dim, self.num_classes) if self.num_classes else nn.Identity()
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, 1 + G*L, D]`` after the final norm (class token first)."""
        if x.ndim != 4 or x.shape[1] != self.in_chans:
            raise GeosaneError(
                f"SatMAE's group-channel ViT takes [B, {self.in_chans}, H, W], got shape {list(x.shape)}"
            )
        if tuple(x.shape[-2:]) != (self.img_size, self.img_size):
            raise GeosaneError(
                f"SatMAE's group-channel ViT takes {self.img_size}x{self.img_size} px (its stored position "
                f"embedding), got {x.shape[-2]}x{x.shape[-1]}"
            )
        groups = torch.stack(
            [embed(x[:, g]) for embed, g in zip(self.patch_embed, self.channel_groups, strict=True)], 1
        )
        batch, count, length, width = groups.shape  # [B, G, L, D]
        pos = self.pos_embed[:, 1:].unsqueeze(1).expand(-1, count, -1, -1)
        chan = self.channel_embed.unsqueeze(2).expand(-1, -1, length, -1)
        tokens = (groups + torch.cat([pos, chan], dim=-1)).reshape(batch, count * length, width)
        cls = self.cls_token + torch.cat([self.pos_embed[:, :1], self.channel_cls_embed], dim=-1)
        out: torch.Tensor = self.norm(self.blocks(torch.cat([cls.expand(batch, -1, -1), tokens], dim=1)))
        return out
