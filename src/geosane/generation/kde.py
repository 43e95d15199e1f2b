"""Sample new per-token latents around anchor latents with a Gaussian kernel density estimate.

``anchors`` holds ``A`` latent sequences of the same layout ``[A, N, D]``: the prompt's own latent
first, optionally followed by the latents of its nearest zoo neighbours. A draw picks an anchor
(per token in ``token`` mode, once per candidate in ``joint`` mode) and adds Gaussian noise
``bandwidth * scale * eps``. ``scale`` is the per-dimension standard deviation of the anchor
latents over all tokens, so the bandwidth is unit-free (SANE's fixed 0.2 assumed normalized
latents). Every token of every candidate gets its own noise draw (the GeoSANE reference seeded
each per-token KDE identically, giving every token the same noise vector).
"""

from __future__ import annotations

import torch

from geosane.generation.config import KDEMode

__all__ = ["KDEMode", "latent_scale", "sample_latents"]



def latent_scale(anchors: torch.Tensor) -> torch.Tensor:
    """Per-dimension standard deviation of ``anchors [A, N, D]`` over anchors and tokens (``[D]``)."""
    flat = anchors.reshape(-1, anchors.shape[-1]).float()
    return flat.std(dim=0, unbiased=False).clamp_min(1e-8)


def sample_latents(
    anchors: torch.Tensor,
    num_samples: int,
    bandwidth: float,
    mode: KDEMode = "token",
    anchor_weights: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw ``num_samples`` latent sequences ``[S, N, D]`` from the KDE over ``anchors [A, N, D]``."""
    if anchors.ndim != 3:
        raise ValueError(f"anchors must be [A, N, D], got {tuple(anchors.shape)}")
    if bandwidth < 0:
        raise ValueError(f"bandwidth must be >= 0, got {bandwidth}")
    num_anchors, num_tokens, dim = anchors.shape
    weights = anchor_weights if anchor_weights is not None else torch.ones(num_anchors)
    weights = weights.float() / weights.sum()
    if mode == "token":
        choice = torch.multinomial(weights, num_samples * num_tokens, replacement=True, generator=generator)
        choice = choice.view(num_samples, num_tokens)
    elif mode == "joint":
        choice = torch.multinomial(weights, num_samples, replacement=True, generator=generator)
        choice = choice[:, None].expand(num_samples, num_tokens)
    else:
        raise ValueError(f"unknown KDE mode '{mode}' (token | joint)")
    centres = anchors.float()[choice, torch.arange(num_tokens)[None, :]]  # [S, N, D]
    scale = latent_scale(anchors) if scale is None else scale.float()
    noise = torch.randn(num_samples, num_tokens, dim, generator=generator)
    return centres + bandwidth * scale * noise
