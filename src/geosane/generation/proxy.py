"""Cheap, label-efficient ranking of candidate weights on frozen features.

Candidates are scored on the *selection* split only, never the test split, and never through a
randomly initialised classifier head (the GeoSANE reference ranked classification candidates with
a freshly reset head, i.e. at chance). We take the backbone's pooled pre-logit features (timm
``forward_features`` + ``forward_head(pre_logits=True)``) and score them with

- ``knn``: leave-one-out k-nearest-neighbour accuracy (cosine similarity), or
- ``linear``: stratified k-fold cross-validated logistic-regression accuracy (scikit-learn).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.utils.data import DataLoader, Dataset

from geosane.generation.config import ProxyKind

__all__ = [
    "ProxyKind",
    "frozen_features",
    "knn_accuracy",
    "knn_predictions",
    "linear_probe_accuracy",
    "proxy_score",
]



@torch.no_grad()
def frozen_features(
    model: nn.Module, data: Dataset, batch_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled pre-logit features ``[N, D]`` (float32) and labels ``[N]`` of ``data`` under ``model``."""
    model.eval()
    features, labels = [], []
    for images, targets in DataLoader(data, batch_size=batch_size):
        if hasattr(model, "forward_head"):
            timm_model: Any = model
            feats = timm_model.forward_head(timm_model.forward_features(images), pre_logits=True)
        else:
            feats = model(images)
        features.append(feats.flatten(1).float())
        labels.append(targets)
    return torch.cat(features), torch.cat(labels)


def knn_predictions(features: torch.Tensor, labels: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Leave-one-out k-NN predictions ``[N]`` with cosine similarity and majority vote (ties: nearest wins)."""
    n = features.shape[0]
    if n < 2:
        raise ValueError("k-NN proxy needs at least two samples")
    k = min(k, n - 1)
    x = torch.nn.functional.normalize(features.double(), dim=1)
    sim = x @ x.T
    sim.fill_diagonal_(-float("inf"))
    neighbours = sim.topk(k, dim=1).indices
    votes = labels[neighbours]  # [n, k]
    num_classes = int(labels.max()) + 1
    counts = torch.zeros(n, num_classes, dtype=torch.float64)
    # Break ties toward nearer neighbours with a tiny rank-decreasing bonus.
    bonus = torch.linspace(1e-3, 0, k, dtype=torch.float64).expand(n, k)
    counts.scatter_add_(1, votes, 1.0 + bonus)
    return counts.argmax(dim=1)


def knn_accuracy(features: torch.Tensor, labels: torch.Tensor, k: int = 5) -> float:
    """Leave-one-out k-NN accuracy (:func:`knn_predictions` against ``labels``)."""
    return float((knn_predictions(features, labels, k) == labels).double().mean())


def linear_probe_accuracy(
    features: torch.Tensor, labels: torch.Tensor, folds: int = 5, seed: int = 0
) -> float:
    """Stratified k-fold cross-validated accuracy of a logistic-regression probe."""
    y = labels.numpy()
    folds = int(min(folds, np.bincount(y).min()))
    if folds < 2:
        raise ValueError("linear proxy needs at least two samples of every class")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.5))
    cv = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    return float(cross_val_score(probe, features.double().numpy(), y, cv=cv).mean())


def proxy_score(model: nn.Module, data: Dataset, kind: ProxyKind = "knn", k: int = 5) -> float:
    """Score ``model`` on ``data`` (the selection split) with the chosen proxy."""
    features, labels = frozen_features(model, data)
    if not torch.isfinite(features).all():
        return float("nan")
    return knn_accuracy(features, labels, k) if kind == "knn" else linear_probe_accuracy(features, labels)
