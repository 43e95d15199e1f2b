"""Weight-space merges of same-architecture models: uniform average, TIES and DARE.

All three work on state dicts (``dict[str, Tensor]``) of one architecture.

- :func:`average_merge`: the element-wise mean of the members ("model soup").
- :func:`ties_merge` (Yadav et al., 2023): task vectors ``tau_t = theta_t - theta_base``; *trim*
  each task vector to its ``density`` fraction of largest magnitudes (over the whole task vector);
  *elect* a sign per entry from the summed trimmed mass; *disjoint mean* of the entries that agree
  with the elected sign; ``theta = theta_base + lam * tau_merged``.
- :func:`dare_merge` (Yu et al., 2024): drop each task-vector entry with probability ``drop_rate``,
  rescale the survivors by ``1 / (1 - drop_rate)`` (seeded), then combine the sparsified task
  vectors by their mean (default) or sum: ``theta = theta_base + lam * combine(tau_hat)``.

Which tensors are merged how (the same rule for all three, reported in :class:`MergeResult`):

- *Weights*: floating-point parameters, merged as above (computed in float32, cast back).
- *Running statistics* (BatchNorm ``running_mean``/``running_var``): not task-vector weights -
  trimming or dropping entries of a variance has no meaning - so they are averaged over the
  members in every method. They only approximate the merged network's statistics; fine-tuning in
  train mode (or :func:`geosane.generation.recalibrate_batchnorm`) re-estimates them.
- *Non-float tensors* (``num_batches_tracked``, integer index buffers, bool masks): copied from the
  base (from the first member for :func:`average_merge`); they cannot be averaged.
- Tensors whose shape differs between models (e.g. classifier heads for different class counts)
  are left out and listed in ``MergeResult.skipped``; task models re-initialise their head anyway.

Keys must be the same in every state dict (a missing key is an error, not silently dropped).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from geosane.errors import GeosaneError

__all__ = [
    "RUNNING_STAT_SUFFIXES",
    "MergeResult",
    "average_merge",
    "dare_merge",
    "task_vectors",
    "ties_merge",
]

StateDict = Mapping[str, torch.Tensor]

RUNNING_STAT_SUFFIXES = ("running_mean", "running_var")


@dataclass
class MergeResult:
    """The merged state dict and how each tensor was treated."""

    state_dict: dict[str, torch.Tensor]
    merged: list[str] = field(default_factory=list)
    averaged_stats: list[str] = field(default_factory=list)
    copied: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, int]:
        return {
            "merged": len(self.merged),
            "averaged_stats": len(self.averaged_stats),
            "copied": len(self.copied),
            "skipped": len(self.skipped),
        }


def is_running_stat(key: str) -> bool:
    """A BatchNorm running mean or variance (statistics, not weights: averaged, never task-vectored)."""
    return key.rsplit(".", 1)[-1] in RUNNING_STAT_SUFFIXES


def _check_keys(models: Sequence[StateDict], names: Sequence[str]) -> None:
    if not models:
        raise GeosaneError("a merge needs at least one model")
    reference = set(models[0])
    for model, name in zip(models[1:], names[1:], strict=True):
        keys = set(model)
        if keys != reference:
            only_ref = sorted(reference - keys)[:3]
            only_this = sorted(keys - reference)[:3]
            raise GeosaneError(
                f"cannot merge {names[0]} and {name}: different tensors "
                f"(only in {names[0]}: {only_ref}, only in {name}: {only_this}); "
                "merges need models of one architecture"
            )


def _classify(models: Sequence[StateDict]) -> dict[str, str]:
    """Per key: 'weight' | 'stat' | 'copy' | 'skip' (shape mismatch)."""
    kinds: dict[str, str] = {}
    for key, ref in models[0].items():
        if any(m[key].shape != ref.shape for m in models[1:]):
            kinds[key] = "skip"
        elif not ref.is_floating_point():
            kinds[key] = "copy"
        elif is_running_stat(key):
            kinds[key] = "stat"
        else:
            kinds[key] = "weight"
    return kinds


def _mean(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.stack([t.detach().float() for t in tensors]).mean(dim=0)


def _assemble(
    models: Sequence[StateDict],
    kinds: Mapping[str, str],
    merged_weights: Mapping[str, torch.Tensor],
    copy_from: StateDict,
) -> MergeResult:
    """Put merged weights, averaged running stats and copied tensors together, in key order."""
    result = MergeResult(state_dict={})
    for key, ref in models[0].items():
        kind = kinds[key]
        if kind == "skip":
            result.skipped.append(key)
            continue
        if kind == "weight":
            value = merged_weights[key]
            result.merged.append(key)
        elif kind == "stat":
            value = _mean([m[key] for m in models])
            result.averaged_stats.append(key)
        else:
            value = copy_from[key].detach().clone()
            result.copied.append(key)
        result.state_dict[key] = value.to(ref.dtype)
    return result


def average_merge(models: Sequence[StateDict], names: Sequence[str] | None = None) -> MergeResult:
    """Element-wise mean of same-architecture state dicts (non-float tensors from the first)."""
    names = list(names) if names is not None else [f"model {i}" for i in range(len(models))]
    _check_keys(models, names)
    kinds = _classify(models)
    weights = {k: _mean([m[k] for m in models]) for k, kind in kinds.items() if kind == "weight"}
    return _assemble(models, kinds, weights, copy_from=models[0])


def task_vectors(
    base: StateDict, members: Sequence[StateDict], keys: Sequence[str]
) -> list[dict[str, torch.Tensor]]:
    """``member - base`` in float32 for ``keys``, one dict per member."""
    return [{k: m[k].detach().float() - base[k].detach().float() for k in keys} for m in members]


def _prepare(
    base: StateDict, members: Sequence[StateDict], names: Sequence[str] | None
) -> tuple[list[StateDict], dict[str, str], list[str]]:
    if not members:
        raise GeosaneError("a task-vector merge needs at least one member besides the base")
    names = list(names) if names is not None else [f"member {i}" for i in range(len(members))]
    everything = [base, *members]
    _check_keys(everything, ["base", *names])
    kinds = _classify(everything)
    return everything, kinds, [k for k, kind in kinds.items() if kind == "weight"]


def _trim(vector: dict[str, torch.Tensor], density: float) -> dict[str, torch.Tensor]:
    """Keep the ``density`` fraction of largest-magnitude entries of one whole task vector."""
    flat = torch.cat([v.reshape(-1) for v in vector.values()]) if vector else torch.zeros(0)
    keep = math.ceil(density * flat.numel())
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    if keep:
        mask[torch.topk(flat.abs(), keep, sorted=False).indices] = True
    out, start = {}, 0
    for key, value in vector.items():
        n = value.numel()
        out[key] = value * mask[start : start + n].view_as(value)
        start += n
    return out


def ties_merge(
    base: StateDict,
    members: Sequence[StateDict],
    density: float = 0.2,
    lam: float = 1.0,
    names: Sequence[str] | None = None,
) -> MergeResult:
    """TIES merge of ``members`` fine-tuned from ``base``: trim, elect sign, disjoint mean, scale.

    ``density`` in (0, 1] is the fraction of each task vector's entries kept (by magnitude, over all
    merged tensors of that task vector); ``lam`` scales the merged task vector.
    """
    if not 0.0 < density <= 1.0:
        raise GeosaneError(f"TIES density must be in (0, 1], got {density}")
    everything, kinds, keys = _prepare(base, members, names)
    trimmed = [_trim(tv, density) for tv in task_vectors(base, members, keys)]
    weights: dict[str, torch.Tensor] = {}
    for key in keys:
        stacked = torch.stack([tv[key] for tv in trimmed])  # [T, ...]
        elected = torch.sign(stacked.sum(dim=0))
        agree = (torch.sign(stacked) == elected) & (stacked != 0)
        count = agree.sum(dim=0)
        disjoint_mean = (stacked * agree).sum(dim=0) / count.clamp_min(1)
        weights[key] = base[key].detach().float() + lam * disjoint_mean
    return _assemble(everything, kinds, weights, copy_from=base)


def dare_merge(
    base: StateDict,
    members: Sequence[StateDict],
    drop_rate: float = 0.5,
    lam: float = 1.0,
    seed: int = 0,
    combine: Literal["mean", "sum"] = "mean",
    names: Sequence[str] | None = None,
) -> MergeResult:
    """DARE merge: drop task-vector entries with probability ``drop_rate``, rescale, combine.

    Survivors are multiplied by ``1 / (1 - drop_rate)`` so each task vector keeps its expectation.
    Masks come from a generator seeded with ``seed`` (same seed, same merge). The sparsified task
    vectors are averaged (``combine="mean"``) or summed (task arithmetic, ``"sum"``) and scaled by
    ``lam``.
    """
    if not 0.0 <= drop_rate < 1.0:
        raise GeosaneError(f"DARE drop_rate must be in [0, 1), got {drop_rate}")
    if combine not in ("mean", "sum"):
        raise GeosaneError(f"DARE combine must be 'mean' or 'sum', got {combine!r}")
    everything, kinds, keys = _prepare(base, members, names)
    generator = torch.Generator().manual_seed(seed)
    rescale = 1.0 / (1.0 - drop_rate)
    combined = {k: torch.zeros(base[k].shape, dtype=torch.float32) for k in keys}
    for tv in task_vectors(base, members, keys):
        for key in keys:
            keep = torch.rand(tv[key].shape, generator=generator) >= drop_rate
            combined[key] += tv[key] * keep * rescale
    divisor = len(members) if combine == "mean" else 1
    weights = {k: base[k].detach().float() + lam * combined[k] / divisor for k in keys}
    return _assemble(everything, kinds, weights, copy_from=base)
