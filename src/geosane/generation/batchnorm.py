"""Recompute BatchNorm running statistics of generated weights on unlabeled images.

Decoded weights come with the prompt's (carried) BN statistics, which do not match the new
filters. We reset every BN layer's running mean/var, switch *only the BN layers* to train mode
with ``momentum=None`` (a cumulative average over all batches, not an exponential one), run
forward passes without gradients, and restore every module's mode and momentum. (The GeoSANE
reference called ``.train()`` then ``.eval()`` before its loop, so its recalibration never ran.)
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["has_batchnorm", "recalibrate_batchnorm"]


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def has_batchnorm(model: nn.Module) -> bool:
    return bool(_bn_layers(model))


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Re-estimate BN running statistics from ``batches`` of images; returns the images seen.

    Weights are never updated. Does nothing (returns 0) for models without BatchNorm.
    """
    layers = _bn_layers(model)
    if not layers:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    model.eval()
    for bn in layers:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    seen = 0
    try:
        for images in batches:
            model(images)
            seen += int(images.shape[0])
    finally:
        for module, mode in modes.items():
            module.train(mode)
        for bn, momentum in momenta.items():
            bn.momentum = momentum
    if seen == 0:
        raise ValueError("BatchNorm recalibration needs at least one batch of images")
    return seen
