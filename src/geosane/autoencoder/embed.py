"""One embedding per model from the autoencoder's latent space, and property prediction from it.

Each model is encoded whole (halo windows) into per-token latents ``[N, lat_dim]``, then pooled:

- ``mean``: the mean latent over the model's tokens (``lat_dim`` values);
- ``stats``: per latent dimension the mean, standard deviation and the 10/25/50/75/90 % quantiles
  (``7 * lat_dim`` values), a richer summary in the spirit of SANE's property probes.

``weight_stats`` is a baseline that needs no autoencoder: per layer type, the mean, standard
deviation and mean absolute value of the raw weights (``3 * num_layer_types`` values).

:func:`probe_property` fits a ridge regression (scikit-learn, standardised features, ridge
strength chosen by internal cross-validation) from an embedding to a manifest property and reports
the cross-validated R^2 of the out-of-fold predictions over all models (one figure, well defined
even when a fold holds a single model).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geosane.autoencoder.model import WeightAutoencoder
from geosane.autoencoder.windows import encode_sequence
from geosane.console import make_progress
from geosane.errors import GeosaneError
from geosane.io import save_safetensors
from geosane.tokens.layer_types import LayerType
from geosane.tokens.store import TokenStore

__all__ = ["QUANTILES", "Embeddings", "embed_store", "probe_property", "save_embeddings"]

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
KINDS = ("mean", "stats", "weight_stats")


@dataclass
class Embeddings:
    """Per-model embeddings (rows follow ``ids``) and the models' manifest properties."""

    ids: list[str]
    mean: torch.Tensor
    stats: torch.Tensor
    weight_stats: torch.Tensor
    properties: list[dict[str, Any]] = field(default_factory=list)

    def get(self, kind: str) -> torch.Tensor:
        if kind not in KINDS:
            raise GeosaneError(f"unknown embedding '{kind}' (choose from {', '.join(KINDS)})")
        return getattr(self, kind)

    def property_values(self, name: str) -> np.ndarray:
        """``name`` for every model (a missing or non-numeric value is an error naming the model)."""
        values = []
        for model_id, props in zip(self.ids, self.properties, strict=True):
            value = props.get(name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                available = sorted(k for k, v in props.items() if isinstance(v, (int, float)) and not isinstance(v, bool))
                raise GeosaneError(
                    f"model '{model_id}' has no numeric property '{name}' "
                    f"(numeric properties: {', '.join(available) or 'none'})"
                )
            values.append(float(value))
        return np.asarray(values)


def _latent_stats(z: torch.Tensor) -> torch.Tensor:
    z = z.float()
    quantiles = torch.quantile(z, torch.tensor(QUANTILES), dim=0)  # [Q, D]
    return torch.cat([z.mean(0), z.std(0, unbiased=False), quantiles.reshape(-1)])


def _weight_stats(tokens: torch.Tensor, mask: torch.Tensor, layer_type: torch.Tensor) -> torch.Tensor:
    out = []
    for code in range(len(LayerType)):
        values = tokens[layer_type == code][mask[layer_type == code]].double()
        if values.numel():
            out += [values.mean(), values.std(unbiased=False), values.abs().mean()]
        else:
            out += [torch.zeros((), dtype=torch.float64)] * 3
    return torch.stack(out).float()


def embed_store(
    model: WeightAutoencoder, store: TokenStore, ids: Sequence[str] | None = None, halo: int | None = None
) -> Embeddings:
    """Embeddings of ``ids`` (default: every model) of ``store``."""
    if store.token_size != model.token_size:
        raise GeosaneError(
            f"token store {store.path} has token size {store.token_size} but the autoencoder expects "
            f"d_t={model.config.d_t}"
        )
    ids = list(ids) if ids is not None else store.ids
    means, stats, weight_stats, props = [], [], [], []
    with make_progress() as progress:
        task = progress.add_task("embedding", total=len(ids), status="")
        for model_id in ids:
            progress.update(task, status=model_id)
            tm = store.load(model_id)
            z = encode_sequence(model, tm.tokens, tm.positions, tm.layer_type, tm.mask, halo=halo).cpu()
            means.append(z.mean(0))
            stats.append(_latent_stats(z))
            weight_stats.append(_weight_stats(tm.tokens, tm.mask, tm.layer_type))
            props.append(dict(store.record(model_id).properties))
            progress.advance(task)
    return Embeddings(ids, torch.stack(means), torch.stack(stats), torch.stack(weight_stats), props)


def save_embeddings(embeddings: Embeddings, path: str | os.PathLike[str]) -> Path:
    """Atomically write the embeddings as safetensors (ids and numeric properties in the metadata)."""
    numeric = [
        {k: v for k, v in p.items() if isinstance(v, (int, float, str, bool)) or v is None}
        for p in embeddings.properties
    ]
    return save_safetensors(
        {kind: embeddings.get(kind) for kind in KINDS},
        path,
        metadata={
            "format": "geosane-embeddings",
            "ids": json.dumps(embeddings.ids),
            "properties": json.dumps(numeric),
            "quantiles": json.dumps(list(QUANTILES)),
        },
    )


def probe_property(
    features: np.ndarray | torch.Tensor, target: np.ndarray, folds: int = 5, seed: int = 0
) -> dict[str, float]:
    """Cross-validated R^2 of a ridge regression from ``features [M, F]`` to ``target [M]``."""
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.model_selection import KFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = features.numpy() if isinstance(features, torch.Tensor) else np.asarray(features)
    y = np.asarray(target, dtype=np.float64)
    if len(y) < 3:
        raise GeosaneError(f"property prediction needs at least 3 models, got {len(y)}")
    folds = min(folds, len(y))
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-3, 4, 15)))
    predicted = cross_val_predict(model, x, y, cv=KFold(folds, shuffle=True, random_state=seed))
    return {
        "r2": float(r2_score(y, predicted)),
        "mae": float(np.abs(y - predicted).mean()),
        "folds": float(folds),
        "models": float(len(y)),
        "target_std": float(y.std()),
    }
