"""One report of how a state dict fails to fit the model it is declared for.

Every loader that checks a checkpoint against its model (architecture records, TorchGeo weights,
GeoFM layouts, DiffusionSat UNets) says the same thing the same way: one line naming the first
missing and the first unexpected key with their counts, or the first shape that differs.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import torch

__all__ = ["key_mismatch"]


def key_mismatch(
    expected: Mapping[str, torch.Tensor],
    given: Mapping[str, torch.Tensor],
    tolerated: Collection[str] = (),
    expected_name: str = "the architecture",
) -> str | None:
    """Why ``given`` does not load strictly into a model whose state dict is ``expected``, in one
    line, or None when it fits. Keys in ``tolerated`` may be missing (a loader fills them).

    ``"missing 'a' (3 missing), unexpected 'b' (1 unexpected)"`` when keys differ, else the first
    shape that differs (``"'k' has shape (5,), the architecture expects (1000,)"``).
    """
    missing = [k for k in expected if k not in given and k not in tolerated]
    unexpected = [k for k in given if k not in expected]
    parts = []
    if missing:
        parts.append(f"missing '{missing[0]}' ({len(missing)} missing)")
    if unexpected:
        parts.append(f"unexpected '{unexpected[0]}' ({len(unexpected)} unexpected)")
    for key, value in given.items():
        if key in expected and tuple(expected[key].shape) != tuple(value.shape):
            parts.append(
                f"'{key}' has shape {tuple(value.shape)}, {expected_name} expects {tuple(expected[key].shape)}"
            )
            break
    return ", ".join(parts) if parts else None
