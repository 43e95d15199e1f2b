"""Centered kernel alignment (CKA) between two representations of the same inputs.

All functions take ``[n, features]`` tensors (rows are the same n inputs) and compute in float64.

- :func:`linear_cka`: ``||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F)`` on column-centred features
  (Kornblith et al. 2019). Biased upward when features outnumber samples.
- :func:`debiased_cka`: the same ratio with the unbiased HSIC estimator (Song et al. 2012) on
  zero-diagonal linear Gram matrices; near 0 for independent features at any width.
- :class:`MinibatchCKA`: unbiased HSIC accumulated over minibatches, each HSIC averaged over batches
  before the ratio is taken (Nguyen et al. 2021), so memory does not grow with the dataset.
  :class:`MinibatchCKAMatrix` does the same for every pair of layers of two models at once.

No library we depend on implements CKA (torchmetrics has none), hence the few lines below.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = [
    "MinibatchCKA",
    "MinibatchCKAMatrix",
    "cka_matrix",
    "debiased_cka",
    "gram_linear",
    "linear_cka",
    "unbiased_hsic",
]


def _as_2d_float64(x: torch.Tensor, name: str) -> torch.Tensor:
    if x.ndim < 2:
        raise ValueError(f"{name} must be [n, features], got shape {tuple(x.shape)}")
    return x.detach().flatten(1).to(torch.float64)


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _as_2d_float64(x, "x"), _as_2d_float64(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must hold the same inputs: {x.shape[0]} vs {y.shape[0]} rows")
    return x, y


def linear_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """Linear CKA of ``x`` ``[n, p]`` and ``y`` ``[n, q]`` (features are centred per column)."""
    x, y = _check_pair(x, y)
    x = x - x.mean(dim=0, keepdim=True)
    y = y - y.mean(dim=0, keepdim=True)
    # Gram form (n x n) when samples are fewer than features: same value, smaller matrices.
    if x.shape[0] < max(x.shape[1], y.shape[1]):
        gram_x, gram_y = x @ x.T, y @ y.T
        cross, norm_x, norm_y = (gram_x * gram_y).sum(), gram_x.norm(), gram_y.norm()
    else:
        cross = (y.T @ x).square().sum()
        norm_x, norm_y = (x.T @ x).norm(), (y.T @ y).norm()
    denom = norm_x * norm_y
    return float(cross / denom) if denom > 0 else float("nan")


def gram_linear(x: torch.Tensor) -> torch.Tensor:
    """Linear Gram matrix ``x x^T`` in float64 with its diagonal set to zero (for unbiased HSIC)."""
    x = _as_2d_float64(x, "x")
    gram = x @ x.T
    gram.fill_diagonal_(0.0)
    return gram


def _hsic_terms(grams: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-Gram total sums ``1^T K 1`` [G] and row sums ``K 1`` [G, n]."""
    rows = grams.sum(dim=-1)
    return rows.sum(dim=-1), rows


def _unbiased_hsic_matrix(grams_a: torch.Tensor, grams_b: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC for every pair of zero-diagonal Grams ``[A, n, n]`` x ``[B, n, n]`` -> ``[A, B]``.

    ``[tr(KL) + (1^T K 1)(1^T L 1)/((n-1)(n-2)) - 2/(n-2) 1^T K L 1] / (n(n-3))``.
    """
    n = grams_a.shape[-1]
    if n < 4:
        raise ValueError(f"unbiased HSIC needs at least 4 samples per batch, got {n}")
    total_a, rows_a = _hsic_terms(grams_a)
    total_b, rows_b = _hsic_terms(grams_b)
    trace = torch.einsum("aij,bij->ab", grams_a, grams_b)  # Grams are symmetric: tr(KL) = sum K*L
    cross = rows_a @ rows_b.T  # 1^T K L 1 = (K 1) . (L 1)
    value = trace + torch.outer(total_a, total_b) / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * cross
    return value / (n * (n - 3))


def unbiased_hsic(gram_x: torch.Tensor, gram_y: torch.Tensor) -> float:
    """Unbiased HSIC of two ``[n, n]`` Gram matrices (their diagonals are ignored)."""
    gram_x = gram_x.to(torch.float64).clone().fill_diagonal_(0.0)
    gram_y = gram_y.to(torch.float64).clone().fill_diagonal_(0.0)
    return float(_unbiased_hsic_matrix(gram_x[None], gram_y[None])[0, 0])


def _cka_from_hsic(cross: torch.Tensor, self_a: torch.Tensor, self_b: torch.Tensor) -> torch.Tensor:
    denom = torch.sqrt(torch.outer(self_a, self_b).clamp_min(0.0))
    return torch.where(denom > 0, cross / denom, torch.full_like(cross, float("nan")))


def debiased_cka(x: torch.Tensor, y: torch.Tensor) -> float:
    """CKA of ``x`` and ``y`` with the unbiased HSIC estimator (full batch, n >= 4)."""
    x, y = _check_pair(x, y)
    gram_x, gram_y = gram_linear(x)[None], gram_linear(y)[None]
    cross = _unbiased_hsic_matrix(gram_x, gram_y)
    return float(_cka_from_hsic(cross, _self_hsic(gram_x), _self_hsic(gram_y))[0, 0])


class MinibatchCKAMatrix:
    """Minibatch CKA between every layer of model A and every layer of model B.

    Call :meth:`update` with the A-layers' and B-layers' features of one batch (same inputs, same
    order); :meth:`compute` returns ``[len(A), len(B)]``. Each layer's Gram is built once per batch;
    HSIC(K, L), HSIC(K, K) and HSIC(L, L) are averaged over batches before the ratio.
    """

    def __init__(self) -> None:
        self.batches = 0
        self._cross: torch.Tensor | None = None
        self._self_a: torch.Tensor | None = None
        self._self_b: torch.Tensor | None = None

    def update(self, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor]) -> None:
        """Accumulate one batch: ``xs`` are ``[n, p_i]`` features of A's layers, ``ys`` of B's."""
        if not xs or not ys:
            raise ValueError("update needs at least one layer from each model")
        sizes = {int(t.shape[0]) for t in (*xs, *ys)}
        if len(sizes) != 1:
            raise ValueError(
                f"all layers must hold the same batch of inputs, got batch sizes {sorted(sizes)}"
            )
        grams_a = torch.stack([gram_linear(x) for x in xs])
        grams_b = torch.stack([gram_linear(y) for y in ys])
        cross = _unbiased_hsic_matrix(grams_a, grams_b)
        self_a, self_b = _self_hsic(grams_a), _self_hsic(grams_b)
        if self._cross is None:
            self._cross, self._self_a, self._self_b = cross, self_a, self_b
        else:
            if cross.shape != self._cross.shape:
                raise ValueError(
                    f"layer counts changed between batches: {tuple(self._cross.shape)} -> {tuple(cross.shape)}"
                )
            self._cross = self._cross + cross
            self._self_a = self._self_a + self_a  # type: ignore[operator]
            self._self_b = self._self_b + self_b  # type: ignore[operator]
        self.batches += 1

    def compute(self) -> torch.Tensor:
        """``[len(A), len(B)]`` float64 CKA from the batch-averaged HSIC values."""
        if self._cross is None or self._self_a is None or self._self_b is None:
            raise ValueError("no batch was accumulated; call update() first")
        n = self.batches
        return _cka_from_hsic(self._cross / n, self._self_a / n, self._self_b / n)


def _self_hsic(grams: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC(K, K) for each Gram in ``[G, n, n]`` (the diagonal only, not a G x G matrix)."""
    n = grams.shape[-1]
    total, rows = _hsic_terms(grams)
    trace = grams.square().sum(dim=(-2, -1))
    value = trace + total.square() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * rows.square().sum(dim=-1)
    return value / (n * (n - 3))


class MinibatchCKA:
    """Minibatch CKA of one pair of representations: ``update(x, y)`` per batch, ``compute()`` at the end."""

    def __init__(self) -> None:
        self._matrix = MinibatchCKAMatrix()

    @property
    def batches(self) -> int:
        return self._matrix.batches

    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Accumulate the HSIC terms of one batch (``x`` ``[n, p]``, ``y`` ``[n, q]``, n >= 4)."""
        self._matrix.update([x], [y])

    def compute(self) -> float:
        """CKA from the batch-averaged unbiased HSIC values."""
        return float(self._matrix.compute()[0, 0])


def cka_matrix(
    xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor], debiased: bool = False
) -> torch.Tensor:
    """Full-batch CKA of every ``xs[i]`` against every ``ys[j]`` (``[n, features]`` each) -> ``[A, B]``.

    Each layer's ``n x n`` Gram is built once (memory ``(A + B) n^2`` float64 values); ``debiased``
    uses the unbiased HSIC, otherwise linear CKA on centred features.
    """
    if debiased:
        grams_a = torch.stack([gram_linear(x) for x in xs])
        grams_b = torch.stack([gram_linear(y) for y in ys])
        return _cka_from_hsic(
            _unbiased_hsic_matrix(grams_a, grams_b), _self_hsic(grams_a), _self_hsic(grams_b)
        )

    def centred_gram(x: torch.Tensor) -> torch.Tensor:
        x = _as_2d_float64(x, "features")
        x = x - x.mean(dim=0, keepdim=True)
        return x @ x.T

    grams_a = torch.stack([centred_gram(x) for x in xs])
    grams_b = torch.stack([centred_gram(y) for y in ys])
    cross = torch.einsum("aij,bij->ab", grams_a, grams_b)
    return _cka_from_hsic(cross, grams_a.square().sum(dim=(1, 2)), grams_b.square().sum(dim=(1, 2)))
