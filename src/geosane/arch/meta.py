"""Architectures without weights: one meta-device build for shapes, key order and fit checks.

Stages often need only an architecture's structure (tensor names and shapes, its modules, its
permutation groups), not its values. Building it on the ``meta`` device costs no memory and no
initialisation; :func:`empty_architecture` is the one place that does so.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from geosane.arch.keys import key_mismatch
from geosane.arch.spec import ArchSpec, build_architecture
from geosane.errors import SourceError

__all__ = ["check_fits", "empty_architecture", "order_like_architecture"]


def empty_architecture(arch: ArchSpec, *, cpu_fallback: bool = True) -> nn.Module:
    """``arch`` built on the meta device (no memory, no init cost).

    Some constructors call ``.item()`` or NumPy during init, which meta tensors refuse; such an
    architecture is then built on the CPU (``cpu_fallback``, real random weights), or the error
    propagates (``cpu_fallback=False``, for callers that must not pay for a real build). A
    :class:`~geosane.errors.SourceError` (unknown architecture, bad kwargs) always propagates.
    """
    try:
        with torch.device("meta"):
            return build_architecture(arch)
    except SourceError:
        raise
    except Exception:
        if not cpu_fallback:
            raise
        return build_architecture(arch)


def check_fits(
    arch: ArchSpec,
    state_dict: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor] | None = None,
) -> list[str]:
    """Why ``state_dict`` does not load strictly into ``arch`` (empty list: it fits).

    ``reference``: a state dict of ``arch`` the caller already built (saves building it again).
    """
    own = empty_architecture(arch).state_dict() if reference is None else reference
    problem = key_mismatch(own, state_dict)
    return [problem] if problem else []


def order_like_architecture(state_dict: dict[str, torch.Tensor], arch: ArchSpec) -> dict[str, torch.Tensor]:
    """``state_dict`` with keys in the architecture's own order (unknown keys last, as given)."""
    try:
        order = list(empty_architecture(arch).state_dict())
    except SourceError:
        return state_dict
    ordered = {k: state_dict[k] for k in order if k in state_dict}
    ordered.update((k, v) for k, v in state_dict.items() if k not in ordered)
    return ordered
