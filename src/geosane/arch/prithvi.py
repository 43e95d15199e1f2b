"""Prithvi (IBM/NASA, HLS): a ViT whose patch embedding is a Conv3d over time (a tubelet).

timm's ``VisionTransformer`` embeds 2D patches only, and Prithvi's checkpoints hold a
``patch_embed.proj.weight`` of shape ``[D, C, t, p, p]`` plus a fixed 3D sin-cos position
embedding over (time, height, width). So geosane writes the encoder here, reusing timm's
transformer ``Block`` unchanged: the tensor names are those of Prithvi's own encoder
(``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.*``, ``norm``) and the blocks are
hookable as ``blocks.N`` like a timm ViT. Prithvi-EO-2.0's optional temporal and location
encodings (``temporal_embed_enc.scale``, ``location_embed_enc.scale``) are sin-cos encodings
of (year, day of year) and (lat, lon) with one learned scale each.

Input follows geosane's temporal convention: ``[B, T, C, H, W]`` (``temporal_frames`` says the
T the weights were trained with); it is permuted to Conv3d's ``[B, C, T, H, W]`` inside. A
``[B, C, H, W]`` image is a single frame (T=1), as Prithvi itself accepts. For another
number of frames or image size the position embedding is recomputed with the same 3D sin-cos
formula (the published one is exactly that formula, never learned).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
from torch import nn

from geosane.arch.vit_head import ClassTokenHead
from geosane.errors import GeosaneError

__all__ = ["PrithviViT", "sincos_1d", "sincos_3d"]


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """``[M, dim]`` sin-cos encoding of ``positions`` (MAE's ``get_1d_sincos_pos_embed_from_grid``)."""
    if dim % 2:
        raise GeosaneError(f"sin-cos encodings need an even width, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    out = positions.reshape(-1).to(torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1).float()


def sincos_3d(dim: int, grid: Sequence[int]) -> torch.Tensor:
    """``[1, 1 + t*h*w, dim]``: the 3D sin-cos position embedding Prithvi is trained with.

    Width, height and time get 6/16, 6/16 and 4/16 of the channels; tokens run time-major, then
    rows, then columns; the class token's row is zero.
    """
    if dim % 16:
        raise GeosaneError(f"Prithvi's 3D position embedding needs embed_dim divisible by 16, got {dim}")
    t, h, w = (int(g) for g in grid)
    w_dim, h_dim, t_dim = dim // 16 * 6, dim // 16 * 6, dim // 16 * 4
    w_emb = sincos_1d(w_dim, torch.arange(w)).repeat(t * h, 1)
    h_emb = sincos_1d(h_dim, torch.arange(h)).repeat_interleave(w, dim=0).repeat(t, 1)
    t_emb = sincos_1d(t_dim, torch.arange(t)).repeat_interleave(h * w, dim=0)
    emb = torch.cat([w_emb, h_emb, t_emb], dim=1)
    return torch.cat([torch.zeros(1, dim), emb], dim=0).unsqueeze(0)


class _TubeletEmbed(nn.Module):
    """Conv3d over (time, height, width) patches; ``proj`` as in Prithvi's checkpoints."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: tuple[int, int, int]) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.proj(x)  # [B, D, T', H', W']
        return out


class _CoordsScale(nn.Module):
    """Prithvi-EO-2.0's temporal/location encoder: sin-cos of two coordinates times one scale."""

    def __init__(self, embed_dim: int, learned: bool) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        if learned:
            self.scale = nn.Parameter(torch.full((1,), 0.1))
        else:
            self.register_buffer("scale", torch.ones(1))

    def encode(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """``[N, embed_dim]``: half the channels for ``first``, the rest for ``second``."""
        half = self.embed_dim // 2
        emb = torch.cat([sincos_1d(half, first), sincos_1d(self.embed_dim - half, second)], dim=-1)
        scale: torch.Tensor = self.scale
        return scale * emb.to(scale.device)


class PrithviViT(ClassTokenHead):
    """Prithvi's encoder (no MAE decoder): tubelet embedding, 3D sin-cos positions, timm blocks.

    timm-style API: ``forward_features`` (tokens ``[B, 1 + N, D]`` after the final norm),
    ``forward_head`` (class token, then ``head``), ``num_prefix_tokens``, ``num_features``,
    ``get_classifier`` / ``reset_classifier``. ``temporal_frames``: the number of frames T.
    """

    pos_embed: torch.Tensor

    def __init__(
        self,
        img_size: int = 224,
        patch_size: Sequence[int] = (1, 16, 16),
        num_frames: int = 3,
        in_chans: int = 6,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        coords_encoding: Sequence[str] = (),
        coords_scale_learn: bool = False,
        num_classes: int = 0,
        norm_eps: float = 1e-5,
        drop_path_rate: float = 0.0,
    ) -> None:
        from timm.models.vision_transformer import Block

        super().__init__()
        patch = tuple(int(p) for p in patch_size)
        if len(patch) != 3:
            raise GeosaneError(f"PrithviViT: patch_size must be (t, h, w), got {list(patch_size)}")
        self.patch_size: tuple[int, int, int] = (patch[0], patch[1], patch[2])
        self.img_size = int(img_size)
        self.in_chans = int(in_chans)
        self.embed_dim = self.num_features = int(embed_dim)
        self.temporal_frames = int(num_frames)
        self.num_prefix_tokens = 1
        self.num_classes = int(num_classes)
        unknown = sorted(set(coords_encoding) - {"time", "location"})
        if unknown:
            raise GeosaneError(
                f"PrithviViT: unknown coords_encoding '{unknown[0]}' (choose from time, location)"
            )
        self.coords_encoding = tuple(coords_encoding)
        self.patch_embed = _TubeletEmbed(self.in_chans, self.embed_dim, self.patch_size)
        if "time" in self.coords_encoding:
            self.temporal_embed_enc = _CoordsScale(self.embed_dim, coords_scale_learn)
        if "location" in self.coords_encoding:
            self.location_embed_enc = _CoordsScale(self.embed_dim, coords_scale_learn)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.register_buffer("pos_embed", sincos_3d(self.embed_dim, self.grid()))
        norm = _layer_norm(norm_eps)
        self.blocks = nn.Sequential(
            *(
                Block(self.embed_dim, int(num_heads), mlp_ratio=float(mlp_ratio), qkv_bias=True,
                      norm_layer=norm, drop_path=drop_path_rate * i / max(depth - 1, 1))
                for i in range(int(depth))
            )
        )  # fmt: skip
        self.norm = norm(self.embed_dim)
        self.head: nn.Module = (
            nn.Linear(self.embed_dim, self.num_classes) if self.num_classes else nn.Identity()
        )
        nn.init.normal_(self.cls_token, std=0.02)

    def grid(
        self, frames: int | None = None, height: int | None = None, width: int | None = None
    ) -> tuple[int, int, int]:
        """Tokens along (time, rows, columns) for an input of that many frames and pixels."""
        t, p, q = self.patch_size
        return (
            (self.temporal_frames if frames is None else frames) // t,
            (self.img_size if height is None else height) // p,
            (self.img_size if width is None else width) // q,
        )

    @property
    def temporal_tokens(self) -> int:
        """Token grids along time (frames / tubelet), laid out time-major: what analysis maps fold."""
        return self.grid()[0]

    # timm's classifier API: ClassTokenHead ---------------------------------------------------

    # forward ---------------------------------------------------------------------------------

    def _as_video(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, C, H, W]`` (or one frame ``[B, C, H, W]``) as Conv3d's ``[B, C, T, H, W]``."""
        if x.ndim == 4:
            x = x.unsqueeze(1)
        if x.ndim != 5:
            raise GeosaneError(
                f"PrithviViT takes [B, T, C, H, W] (or [B, C, H, W] for one frame), got shape {list(x.shape)}"
            )
        if x.shape[2] != self.in_chans:
            raise GeosaneError(
                f"PrithviViT expects {self.in_chans} bands per frame (dimension 2 of [B, T, C, H, W]), "
                f"got {x.shape[2]} (input shape {list(x.shape)})"
            )
        if x.shape[1] % self.patch_size[0]:
            raise GeosaneError(
                f"PrithviViT: {x.shape[1]} frames do not divide into tubelets of {self.patch_size[0]}"
            )
        return x.permute(0, 2, 1, 3, 4)

    def position_embedding(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """The stored embedding for the trained grid, else the same sin-cos formula for ``grid``."""
        pos = self.pos_embed
        if tuple(grid) == self.grid():
            return pos
        return sincos_3d(self.embed_dim, grid).to(device=pos.device, dtype=pos.dtype)

    def forward_features(
        self,
        x: torch.Tensor,
        temporal_coords: torch.Tensor | None = None,
        location_coords: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Tokens ``[B, 1 + T'*H'*W', D]``. ``temporal_coords``: ``[B, T, 2]`` (year, day of year);
        ``location_coords``: ``[B, 2]`` (lat, lon); used only by weights trained with them."""
        video = self._as_video(x)
        tokens = self.patch_embed(video)  # [B, D, T', H', W']
        grid = (tokens.shape[2], tokens.shape[3], tokens.shape[4])
        tokens = tokens.flatten(2).transpose(1, 2)
        pos = self.position_embedding(grid)
        tokens = tokens + pos[:, 1:]
        if temporal_coords is not None and hasattr(self, "temporal_embed_enc"):
            enc = self.temporal_embed_enc
            per_frame = enc.encode(temporal_coords[..., 0].flatten(), temporal_coords[..., 1].flatten())
            per_frame = per_frame.reshape(temporal_coords.shape[0], temporal_coords.shape[1], -1)
            tokens = tokens + per_frame.repeat_interleave(tokens.shape[1] // temporal_coords.shape[1], dim=1)
        if location_coords is not None and hasattr(self, "location_embed_enc"):
            enc = self.location_embed_enc
            tokens = tokens + enc.encode(location_coords[:, 0], location_coords[:, 1]).unsqueeze(1)
        cls = (self.cls_token + pos[:, :1]).expand(tokens.shape[0], -1, -1)
        out: torch.Tensor = self.norm(self.blocks(torch.cat([cls, tokens], dim=1)))
        return out


def _layer_norm(eps: float) -> Any:
    """LayerNorm with ``eps`` (timm's blocks pass device/dtype keywords through)."""
    return partial(nn.LayerNorm, eps=eps)
