"""The weight-space autoencoder: a GPT-2 style transformer over windows of weight tokens.

    tokens [B, W, d_t] --in--> d_model (+ position (n, l, k) + layer type) --encoder blocks-->
    LayerNorm --> latent z [B, W, lat_dim]   (one latent per token, no pooled bottleneck)
    z --> d_model (+ position + layer type) --decoder blocks--> LayerNorm --> [B, W, d_t]

Blocks are pre-LayerNorm, bias-free, non-causal (``F.scaled_dot_product_attention``) with a 4x
GELU MLP; weights start at N(0, 0.02) and the residual projections at N(0, 0.02 / sqrt(2L)), as in
GPT-2. A projection head maps the flattened latents of a window to a small vector for NT-Xent.

Positions. Each token carries ``(n, l, k)``: its index in the model, its layer, its chunk inside
the layer. The paper embeds the global ``n`` with a learned table, but (l, k) already locate a
token inside its model, and ViT-L alone has ~1.3M tokens, so a global table is both redundant and
huge. By default ``n`` is therefore taken *inside the window* (``n - n_first``, at most ``window``
rows), which generalises to models of any length; ``n_index="global"`` restores the paper's
behaviour. Every index has a learned table, a fixed sinusoid, or (``hybrid``, the default) both:
the sinusoid gives any index a distinct code and the learned table refines the indices it covers,
so layers/chunks beyond the tables (a bigger model than any seen in training) still get a
meaningful position.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from geosane.autoencoder.config import ModelConfig, PositionEncoding
from geosane.tokens.settings import DEFAULT_TOKEN_SIZE

__all__ = ["WeightAutoencoder", "sinusoid"]

INIT_STD = 0.02
# Sinusoids have RMS 1/sqrt(2); scale them to the learned tables' N(0, 0.02) so that switching the
# encoding does not change the size of the position signal relative to the token signal.
SINUSOID_SCALE = INIT_STD * math.sqrt(2.0)


def sinusoid(index: torch.Tensor, dim: int) -> torch.Tensor:
    """Fixed sinusoidal code ``[..., dim]`` of integer ``index [...]`` (Vaswani et al.)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=index.device) / max(half, 1))
    angles = index.to(torch.float32)[..., None] * freqs
    code = torch.cat([angles.sin(), angles.cos()], dim=-1)
    if dim % 2:
        code = F.pad(code, (0, 1))
    return code * SINUSOID_SCALE


class IndexEmbedding(nn.Module):
    """Embedding of a non-negative integer index: learned table, sinusoid, or their sum (hybrid)."""

    def __init__(self, rows: int, dim: int, encoding: PositionEncoding) -> None:
        super().__init__()
        self.rows, self.dim, self.encoding = rows, dim, encoding
        self.table = nn.Embedding(rows, dim) if encoding in ("learned", "hybrid") else None

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        index = index.clamp_min(0)
        if self.table is None:
            return sinusoid(index, self.dim)
        inside = index < self.rows
        learned = self.table(torch.where(inside, index, 0)) * inside[..., None]
        if self.encoding == "learned":
            return learned  # indices beyond the table are rejected up front (check_positions)
        return learned + sinusoid(index, self.dim)


class TokenEmbedding(nn.Module):
    """Position (n, l, k) plus layer-type embedding added to the projected tokens."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_index = config.n_index
        n_rows = config.window if config.n_index == "window" else config.max_n
        self.n = IndexEmbedding(n_rows, config.d_model, config.position_encoding)
        self.layer = IndexEmbedding(config.max_layers, config.d_model, config.position_encoding)
        self.chunk = IndexEmbedding(config.max_chunks, config.d_model, config.position_encoding)
        self.layer_type = nn.Embedding(config.num_layer_types, config.d_model)

    def forward(self, positions: torch.Tensor, layer_type: torch.Tensor) -> torch.Tensor:
        n, layer, chunk = positions.unbind(-1)
        out = self.layer(layer) + self.chunk(chunk) + self.layer_type(layer_type.clamp_min(0))
        if self.n_index == "window":
            out = out + self.n(n - n[:, :1])
        elif self.n_index == "global":
            out = out + self.n(n)
        return out


class SelfAttention(nn.Module):
    """Bias-free multi-head self-attention, non-causal, with an optional key-padding mask."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.n_heads, self.dropout, self.impl = config.n_heads, config.dropout, config.attention
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.proj.residual_projection = True  # type: ignore[assignment]

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.n_heads, width // self.n_heads).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # [B, H, W, hd]
        dropout = self.dropout if self.training else 0.0
        if self.impl == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        else:  # the explicit computation SDPA replaces; kept to measure what SDPA gives
            scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
            if attn_mask is not None:
                scores = scores.masked_fill(~attn_mask, float("-inf"))
            y = F.dropout(scores.softmax(-1), dropout, self.training) @ v
        return self.proj(y.transpose(1, 2).reshape(batch, length, width))


class MLP(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(config.d_model, 4 * config.d_model, bias=False)
        self.proj = nn.Linear(4 * config.d_model, config.d_model, bias=False)
        self.proj.residual_projection = True  # type: ignore[assignment]
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.proj(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Pre-LayerNorm transformer block."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.d_model, bias=False)
        self.attn = SelfAttention(config)
        self.ln_2 = nn.LayerNorm(config.d_model, bias=False)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), attn_mask)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """Input projection + embeddings, ``n_layers`` blocks, final LayerNorm, output projection."""

    def __init__(self, config: ModelConfig, d_in: int, d_out: int) -> None:
        super().__init__()
        self.input = nn.Linear(d_in, config.d_model)
        self.embed = TokenEmbedding(config)
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.d_model, bias=False)
        self.output = nn.Linear(config.d_model, d_out)

    def forward(
        self,
        x: torch.Tensor,
        positions: torch.Tensor,
        layer_type: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        attn_mask = None if valid is None else valid[:, None, None, :]  # padding keys are ignored
        h = self.dropout(self.input(x) + self.embed(positions, layer_type))
        for block in self.blocks:
            h = block(h, attn_mask)
        return self.output(self.ln_f(h))


class WeightAutoencoder(nn.Module):
    """Sequence autoencoder over weight tokens with a per-token latent (see module docstring)."""

    token_scale: torch.Tensor  # the buffer registered in __init__

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        # d_t unset: built without a token store (training resolves d_t from its store before this)
        d_t = DEFAULT_TOKEN_SIZE if config.d_t is None else config.d_t
        self.config = config = dataclasses.replace(config, d_t=d_t)
        # Weights are small numbers (std ~0.05); dividing by the training data's scale puts the
        # token signal on the scale of the embeddings. Set from the token store when training starts.
        self.register_buffer("token_scale", torch.ones(()))
        self.encoder = Transformer(config, d_t, config.lat_dim)
        self.decoder = Transformer(config, config.lat_dim, d_t)
        self.projection = nn.Sequential(
            nn.Linear(config.window * config.lat_dim, config.proj_hidden),
            nn.GELU(),
            nn.Linear(config.proj_hidden, config.proj_dim),
        )
        if self.token_scale.is_meta:  # built on the meta device (e.g. to count parameters): no values
            return
        self.apply(self._init_weights)
        residual_std = INIT_STD / math.sqrt(2 * config.n_layers)
        for name, param in self.named_parameters():
            module = self.get_submodule(name.rsplit(".", 1)[0])
            if getattr(module, "residual_projection", False):
                nn.init.normal_(param, 0.0, residual_std)

    @property
    def token_size(self) -> int:
        """``d_t``: the size of the tokens it encodes and decodes."""
        return int(self.config.d_t or DEFAULT_TOKEN_SIZE)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, INIT_STD)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def encode(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        layer_type: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Latents ``[B, W, lat_dim]`` of token windows ``[B, W, d_t]``; ``valid`` masks padding keys."""
        return self.encoder(tokens / self.token_scale, positions, layer_type, valid)

    def decode(
        self,
        z: torch.Tensor,
        positions: torch.Tensor,
        layer_type: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Reconstructed tokens ``[B, W, d_t]`` from latents ``[B, W, lat_dim]``."""
        return self.decoder(z, positions, layer_type, valid) * self.token_scale

    def project(self, z: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
        """Contrastive projection ``[B, proj_dim]`` of a window's latents (padding tokens zeroed)."""
        if z.shape[1] != self.config.window:
            raise ValueError(f"the projection head needs windows of {self.config.window} tokens, got {z.shape[1]}")
        if valid is not None:
            z = z * valid[..., None]
        return self.projection(z.flatten(1))

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        layer_type: torch.Tensor,
        valid: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(reconstruction, z)`` of a batch of windows."""
        z = self.encode(tokens, positions, layer_type, valid)
        return self.decode(z, positions, layer_type, valid), z

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
