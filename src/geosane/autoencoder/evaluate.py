"""Reconstruction quality of whole models: R^2 over every real weight entry.

Two figures per set of models: ``r2`` (``1 - SSE / SST`` with SST about the mean of all entries,
the usual definition) and ``r2_layer`` (SST about each layer's own mean, so the between-layer
spread of scales, e.g. BatchNorm weights near 1 vs conv weights near 0, earns nothing; stricter).
Models are encoded and decoded whole with halo windows, exactly as generation does.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from geosane.autoencoder.model import WeightAutoencoder
from geosane.autoencoder.windows import decode_sequence, encode_sequence
from geosane.tokens.store import TokenStore

__all__ = ["reconstruct", "reconstruction_metrics"]


@torch.no_grad()
def reconstruct(model: WeightAutoencoder, tokens: torch.Tensor, positions: torch.Tensor, layer_type: torch.Tensor,
                mask: torch.Tensor, halo: int | None = None) -> torch.Tensor:
    """Encode then decode a whole token sequence; padding entries of the result are zero."""
    z = encode_sequence(model, tokens, positions, layer_type, mask, halo=halo)
    return decode_sequence(model, z, positions, layer_type, halo=halo).cpu() * mask


def _sums(target: torch.Tensor, recon: torch.Tensor, mask: torch.Tensor, layer: torch.Tensor) -> dict[str, Any]:
    t, r = target[mask].double(), recon[mask].double()
    layer_of_entry = layer[:, None].expand_as(mask)[mask]
    _, group = torch.unique(layer_of_entry, return_inverse=True)
    count = torch.bincount(group).double()
    s = torch.bincount(group, weights=t)
    sq = torch.bincount(group, weights=t * t)
    return {
        "sse": float(((t - r) ** 2).sum()),
        "sum": float(t.sum()),
        "sumsq": float((t * t).sum()),
        "count": float(t.numel()),
        "sst_layer": float((sq - s * s / count).sum()),
    }


def _r2(sse: float, total: float, total_sq: float, count: float, sst_layer: float) -> dict[str, float]:
    sst = total_sq - total * total / count if count else 0.0
    return {
        "r2": 1.0 - sse / sst if sst > 0 else float("nan"),
        "r2_layer": 1.0 - sse / sst_layer if sst_layer > 0 else float("nan"),
        "mse": sse / count if count else float("nan"),
    }


def reconstruction_metrics(
    model: WeightAutoencoder, store: TokenStore, models: Sequence[str], halo: int | None = None
) -> dict[str, Any]:
    """Pooled ``r2``, ``r2_layer`` and ``mse`` over ``models`` of ``store``, plus each model's."""
    totals = {"sse": 0.0, "sum": 0.0, "sumsq": 0.0, "count": 0.0, "sst_layer": 0.0}
    per_model = {}
    for model_id in models:
        tm = store.load(model_id)
        recon = reconstruct(model, tm.tokens, tm.positions, tm.layer_type, tm.mask, halo)
        sums = _sums(tm.tokens, recon, tm.mask, tm.positions[:, 1])
        per_model[model_id] = _r2(sums["sse"], sums["sum"], sums["sumsq"], sums["count"], sums["sst_layer"])["r2"]
        for key in totals:
            totals[key] += sums[key]
    pooled = _r2(totals["sse"], totals["sum"], totals["sumsq"], totals["count"], totals["sst_layer"])
    return {**pooled, "models": len(models), "per_model": per_model}
