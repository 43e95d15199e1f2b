"""The task-data layer the stages share: split names and fractions, sample caps, one in-memory type.

Every stage that trains or measures on labelled images (``zoo build``, ``generate``'s ranking,
``finetune`` / ``compare``, probing and CKA, SatDiFuser) cuts its data with the functions here,
so that a change to how data is split, capped or normalised is made once:

- splits: :func:`geosane.data.stratified_split` (by class) or :func:`geosane.data.group_split`
  (by scene or block), on the fractions :func:`split_fractions` checks and renormalises;
- caps: :func:`cap_samples` (at most N of some indices) and :func:`cap_per_class` (at most N per
  class), both under the one RNG rule below;
- normalisation: :func:`geosane.data.normalize.choose_normalization`;
- :class:`TaskData`: images, targets, class names and split indices of one task in memory.

**The capping RNG rule.** A cap draws from ``numpy.random.default_rng(seed)``: per class, in
ascending class order, the class's indices (ascending) are permuted with ``rng.permutation`` and
the first ``limit`` kept; without classes the same over all indices. The kept indices are returned
sorted. The result is a pure function of the labels, the limit and the seed. A stage that also
splits with the same seed may pass a derived seed (``finetune`` caps with ``split_seed + 7919``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from geosane.data.tensors import Normalization
from geosane.errors import ConfigError

__all__ = ["SPLITS", "TaskData", "TaskPart", "cap_per_class", "cap_samples", "split_fractions"]

SPLITS: tuple[str, ...] = ("train", "select", "test")


def _check_limit(limit: int) -> None:
    if limit <= 0:
        raise ConfigError(f"sample limits must be positive, got {limit}")


def cap_samples(indices: np.ndarray, limit: int | None, seed: int) -> np.ndarray:
    """At most ``limit`` of ``indices``, a seeded random choice (module doc), sorted.

    ``None`` (or ``limit >= indices.size``) keeps ``indices`` as they are.
    """
    indices = np.asarray(indices)
    if limit is None:
        return indices
    _check_limit(limit)
    if indices.size <= limit:
        return indices
    rng = np.random.default_rng(seed)
    return np.sort(indices[rng.permutation(indices.size)[:limit]])


def cap_per_class(
    labels: np.ndarray | torch.Tensor, limit: int | None, seed: int, indices: np.ndarray | None = None
) -> np.ndarray:
    """At most ``limit`` samples per class, a seeded random choice (module doc), sorted.

    ``labels`` are the class (or group) of every sample; ``indices`` restricts the choice to those
    samples (default: all). ``None`` keeps every index.
    """
    labels = labels.numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    indices = np.arange(labels.size) if indices is None else np.asarray(indices)
    if limit is None:
        return indices
    _check_limit(limit)
    rng = np.random.default_rng(seed)
    keep = []
    for cls in np.unique(labels[indices]):
        members = indices[labels[indices] == cls]
        keep.append(members[rng.permutation(members.size)[:limit]])
    return np.sort(np.concatenate(keep)) if keep else indices


def split_fractions(
    fractions: Mapping[str, float], names: Sequence[str], key: str = "data.fractions"
) -> dict[str, float]:
    """The fractions of the splits ``names`` cut from one dataset, renormalised to sum to 1.

    ``fractions`` must name exactly the splits ``train`` / ``select`` / ``test``; the ones a
    separate folder (or held-out scenes) provides are left out of ``names``.
    """
    if set(fractions) != set(SPLITS):
        raise ConfigError(f"{key} needs exactly the splits {list(SPLITS)}, got {sorted(fractions)}")
    total = sum(fractions[n] for n in names)
    return {n: fractions[n] / total for n in names}


@dataclass(frozen=True)
class TaskPart:
    """Raw images ``[N, C, H, W]`` (or temporal stacks ``[N, T, C, H, W]``) and targets (class
    ``[N]``, value ``[N]`` or mask ``[N, H, W]``); caps and subsets index the first axis either way."""

    images: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: np.ndarray) -> TaskPart:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return TaskPart(self.images[idx], self.targets[idx])


@dataclass(frozen=True)
class TaskData:
    """One task in memory: every image and target, the class names and each split's indices.

    ``images`` are as the stage feeds them (raw, or scaled as SatDiFuser's UNet wants);
    ``normalization`` is what a model applies to them (None where the stage scales itself).
    """

    task: str
    images: torch.Tensor
    targets: torch.Tensor
    classes: tuple[str, ...]
    splits: dict[str, np.ndarray]
    normalization: Normalization | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_bands(self) -> int:
        return int(self.images.shape[-3])  # [N, C, H, W] or temporal [N, T, C, H, W]

    def part(self, name: str) -> TaskPart:
        """The images and targets of split ``name``."""
        idx = torch.as_tensor(self.splits[name], dtype=torch.long)
        return TaskPart(self.images[idx], self.targets[idx])

    def sizes(self) -> dict[str, int]:
        return {name: int(np.asarray(idx).size) for name, idx in self.splits.items()}

    def digest(self) -> str:
        """SHA-256 of the images (cache keys: same images in the same order -> same features)."""
        return hashlib.sha256(self.images.contiguous().numpy().tobytes()).hexdigest()
