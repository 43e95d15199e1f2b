"""Deterministic, seeded, stratified splits (train / selection / test by default).

The *selection* split is what candidate ranking and model selection may look at; the *test* split
is only ever used to report results. Splits are a pure function of the labels, the fractions and
the seed, so every stage that asks for them gets the same indices.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from geosane.errors import DataError

__all__ = ["DEFAULT_FRACTIONS", "group_split", "split_sizes", "stratified_split"]

DEFAULT_FRACTIONS: dict[str, float] = {"train": 0.6, "select": 0.1, "test": 0.3}


def stratified_split(
    labels: np.ndarray | list[int],
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split sample indices so that every split has each class in proportion.

    Per class, indices are shuffled with ``seed`` and cut by the cumulative fractions (largest
    remainder rounding, so the sizes add up exactly). Raises :class:`DataError` when a split would
    receive no sample of some class.
    """
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    if not fractions or any(f <= 0 for f in fractions.values()):
        raise DataError(f"split fractions must all be positive, got {fractions}")
    total = sum(fractions.values())
    if not np.isclose(total, 1.0):
        raise DataError(f"split fractions must sum to 1, got {total:.4f} from {fractions}")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out: dict[str, list[np.ndarray]] = {name: [] for name in fractions}
    names = list(fractions)
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(idx.size)]
        counts = np.array([split_sizes(idx.size, fractions)[n] for n in names])
        if (counts == 0).any():
            empty = [n for n, c in zip(names, counts, strict=True) if c == 0]
            raise DataError(
                f"class {cls} has only {idx.size} samples: split(s) {empty} would get none "
                f"(fractions {fractions}); use more data or fewer/larger splits"
            )
        for name, part in zip(names, np.split(idx, np.cumsum(counts)[:-1]), strict=True):
            out[name].append(part)
    return {name: np.sort(np.concatenate(parts)) for name, parts in out.items()}


def split_sizes(count: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """How many of ``count`` samples (of one class) :func:`stratified_split` puts in each split:
    the fractions' shares, rounded down, the rest going to the largest remainders (ties in order)."""
    names = list(fractions)
    exact = np.array([fractions[n] for n in names]) * count
    counts = np.floor(exact).astype(int)
    remainder = count - int(counts.sum())
    counts[np.argsort(-(exact - counts), kind="stable")[:remainder]] += 1
    return {n: int(c) for n, c in zip(names, counts, strict=True)}


def group_split(
    groups: np.ndarray | list[str] | tuple[str, ...],
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Split sample indices so that all samples of a group (a scene, a spatial block) share a split.

    The distinct groups are shuffled with ``seed`` and dealt to the splits by the cumulative
    fractions of the *group count* (largest remainder rounding). Raises :class:`DataError` when
    there are fewer groups than splits.
    """
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    if not fractions or any(f <= 0 for f in fractions.values()):
        raise DataError(f"split fractions must all be positive, got {fractions}")
    groups = np.asarray(groups)
    unique = np.unique(groups)
    names = list(fractions)
    if unique.size < len(names):
        raise DataError(
            f"{unique.size} group(s) {unique.tolist()} cannot fill the {len(names)} splits {names} "
            "without sharing a group between splits; add data or use smaller groups"
        )
    order = unique[np.random.default_rng(seed).permutation(unique.size)]
    weights = np.array([fractions[n] for n in names]) / sum(fractions.values())
    exact = weights * unique.size
    counts = np.maximum(np.floor(exact).astype(int), 1)
    while counts.sum() > unique.size:  # the max(., 1) above may overshoot: take from the largest
        counts[np.argmax(counts)] -= 1
    remainder = unique.size - counts.sum()
    counts[np.argsort(-(exact - counts), kind="stable")[:remainder]] += 1
    out: dict[str, np.ndarray] = {}
    for name, part in zip(names, np.split(order, np.cumsum(counts)[:-1]), strict=True):
        out[name] = np.sort(np.flatnonzero(np.isin(groups, part)))
    return out
