"""Losses of the weight-space autoencoder and the noise views for its contrastive term.

Reconstruction is a masked MSE normalised at run time: prediction and target are standardised by
the mean and standard deviation of the *real* target entries of a group (the whole batch, as in the
reference implementations; or each token; or each layer of each window), so layers of very
different scale contribute comparably without a preprocessing pass. Padding entries (``mask``
False) and padding tokens (``valid`` False) never contribute, neither to the statistics nor to the
error.

NT-Xent (SimCLR's normalised temperature-scaled cross entropy) pulls the two views of a window
together and pushes the other windows of the batch away.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

__all__ = ["NormalizeMode", "noisy_view", "nt_xent", "reconstruction_loss", "reconstruction_r2"]

NormalizeMode = Literal["batch", "token", "layer"]


def _group_ids(mode: NormalizeMode, weight: torch.Tensor, layer: torch.Tensor | None) -> torch.Tensor:
    """Group index ``[B, W]`` per token for the normalisation statistics."""
    batch, length = weight.shape[:2]
    if mode == "batch":
        return torch.zeros(batch, length, dtype=torch.long, device=weight.device)
    if mode == "token":
        return torch.arange(batch * length, device=weight.device).view(batch, length)
    if mode == "layer":
        if layer is None:
            raise ValueError("normalize='layer' needs the tokens' layer indices")
        layer = layer.clamp_min(0)
        key = torch.arange(batch, device=weight.device)[:, None] * (int(layer.max()) + 1) + layer
        return torch.unique(key, return_inverse=True)[1].view(batch, length)
    raise ValueError(f"unknown normalisation '{mode}' (batch | token | layer)")


def reconstruction_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    valid: torch.Tensor | None = None,
    mode: NormalizeMode = "batch",
    layer: torch.Tensor | None = None,
    std_floor: float = 1e-4,
    reference_var: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Masked MSE between ``pred`` and ``target`` ``[B, W, d_t]`` after run-time standardisation.

    The error is averaged over each window's real entries, then over the windows. With ``token``
    or ``layer`` statistics the loss of a batch is the mean of its windows' losses (gradient
    accumulation is exact); ``batch`` statistics, like NT-Xent's negatives, depend on the batch.

    ``mask`` marks real entries, ``valid`` real tokens, ``layer`` ``[B, W]`` the layer index (for
    ``mode='layer'``). A group's variance is floored at ``std_floor`` times ``reference_var`` (a
    layer of identical values, e.g. untrained norm scales, cannot blow up the loss), and a group
    with a single real entry uses ``reference_var``. ``reference_var`` defaults to the variance of
    the batch's real entries; training passes a fixed one (the training store's variance), which
    keeps ``token``/``layer`` losses independent of which windows share a batch.
    """
    weight = mask.to(pred.dtype)
    if valid is not None:
        weight = weight * valid[..., None].to(pred.dtype)
    pred, target = pred.float(), target.float()
    target = target.detach()
    weight = weight.float()
    count = weight.sum()
    if count == 0:
        return pred.sum() * 0.0
    batch_mean = (target * weight).sum() / count
    batch_var = (((target - batch_mean) ** 2) * weight).sum() / count
    reference = batch_var if reference_var is None else torch.as_tensor(reference_var, device=pred.device).float()
    groups = _group_ids(mode, weight, layer).reshape(-1)
    num_groups = int(groups.max()) + 1
    per_token = weight.sum(-1).reshape(-1)
    g_count = torch.zeros(num_groups, device=pred.device).index_add_(0, groups, per_token)
    g_sum = torch.zeros(num_groups, device=pred.device).index_add_(0, groups, (target * weight).sum(-1).reshape(-1))
    g_mean = g_sum / g_count.clamp_min(1.0)
    centred = (target - g_mean[groups].view(*target.shape[:2], 1)) ** 2 * weight
    g_var = torch.zeros(num_groups, device=pred.device).index_add_(0, groups, centred.sum(-1).reshape(-1))
    g_var = g_var / g_count.clamp_min(1.0)
    g_var = torch.where(g_count >= 2, g_var, reference)  # a lone entry has no spread: use the reference
    g_std = torch.maximum(g_var, std_floor * reference).clamp_min(1e-12).sqrt()
    mean = g_mean[groups].view(*target.shape[:2], 1)
    std = g_std[groups].view(*target.shape[:2], 1)
    error = ((pred - mean) / std - (target - mean) / std) ** 2
    # mean over each window's real entries, then over windows: every window weighs the same, so
    # k micro-batches of b windows give exactly the loss of one batch of k * b windows
    per_window = (error * weight).sum((1, 2)) / weight.sum((1, 2)).clamp_min(1.0)
    return per_window[weight.sum((1, 2)) > 0].mean()


def nt_xent(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """NT-Xent loss of two views ``a, b [B, D]``: row i of ``a`` and row i of ``b`` are positives."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"views must both be [B, D], got {tuple(a.shape)} and {tuple(b.shape)}")
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b]).float(), dim=1)
    logits = z @ z.T / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, positives)


def noisy_view(
    tokens: torch.Tensor,
    mask: torch.Tensor,
    multiplicative: float,
    additive: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``x * (1 + m * eps) + a * eps'`` on real entries; padding entries stay zero."""
    out = tokens
    if multiplicative > 0:
        eps = torch.randn(tokens.shape, generator=generator, device=tokens.device, dtype=tokens.dtype)
        out = out * (1.0 + multiplicative * eps)
    if additive > 0:
        eps = torch.randn(tokens.shape, generator=generator, device=tokens.device, dtype=tokens.dtype)
        out = out + additive * eps
    return out * mask


def reconstruction_r2(
    sse: float, sum_target: float, sum_sq_target: float, count: float
) -> float:
    """``1 - SSE / SST`` from accumulated sums over real entries (SST about their mean)."""
    if count <= 0:
        return float("nan")
    sst = sum_sq_target - sum_target**2 / count
    return 1.0 - sse / sst if sst > 0 else float("nan")
