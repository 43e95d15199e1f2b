from __future__ import annotations

import pytest
import torch

from geosane.analysis import (
    MinibatchCKA,
    MinibatchCKAMatrix,
    cka_matrix,
    debiased_cka,
    gram_linear,
    linear_cka,
    unbiased_hsic,
)


def _features(n: int = 120, p: int = 40, q: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g)
    y = torch.tanh(x @ torch.randn(p, q, generator=g)) + 0.5 * torch.randn(n, q, generator=g)
    return x, y


def _minibatch(x: torch.Tensor, y: torch.Tensor, batch: int) -> float:
    acc = MinibatchCKA()
    for start in range(0, x.shape[0], batch):
        acc.update(x[start : start + batch], y[start : start + batch])
    return acc.compute()


def test_cka_of_a_representation_with_itself_is_one() -> None:
    x, _ = _features()
    assert linear_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert debiased_cka(x, x) == pytest.approx(1.0, abs=1e-12)
    assert _minibatch(x, x, 40) == pytest.approx(1.0, abs=1e-12)
    wide = torch.randn(20, 500)  # fewer samples than features: the Gram-form branch
    assert linear_cka(wide, wide) == pytest.approx(1.0, abs=1e-12)


def test_invariant_to_orthogonal_transforms_and_isotropic_scaling() -> None:
    x, y = (t.double() for t in _features())
    q, _ = torch.linalg.qr(torch.randn(x.shape[1], x.shape[1], dtype=torch.float64))
    moved = x @ q * 7.5
    for cka in (linear_cka, debiased_cka):
        assert cka(moved, y) == pytest.approx(cka(x, y), abs=1e-10)
        assert cka(x, y * 0.01) == pytest.approx(cka(x, y), abs=1e-10)
    assert _minibatch(moved, y, 30) == pytest.approx(_minibatch(x, y, 30), abs=1e-10)
    # but not invariant to an arbitrary invertible linear map (CKA is not CCA)
    stretch = x @ torch.diag(torch.linspace(0.1, 10, x.shape[1], dtype=torch.float64))
    assert abs(linear_cka(stretch, y) - linear_cka(x, y)) > 1e-3


def test_independent_random_features_give_near_zero_debiased_and_minibatch_cka() -> None:
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(256, 1000, generator=g), torch.randn(256, 1000, generator=g)
    assert abs(debiased_cka(x, y)) < 0.02
    assert abs(_minibatch(x, y, 64)) < 0.03
    # the plain (biased) estimator is far from 0 when features outnumber samples: why debiasing matters
    assert linear_cka(x, y) > 0.5


def test_minibatch_with_one_batch_equals_full_batch_debiased_cka() -> None:
    x, y = _features(n=90)
    assert _minibatch(x, y, batch=90) == pytest.approx(debiased_cka(x, y), abs=1e-12)
    several = _minibatch(x, y, batch=30)
    assert several != pytest.approx(debiased_cka(x, y), abs=1e-6)  # each batch is its own estimate
    assert several == pytest.approx(debiased_cka(x, y), abs=0.1)


def test_unbiased_hsic_matches_the_formula_written_out() -> None:
    x, y = _features(n=12)
    k, l_ = gram_linear(x), gram_linear(y)
    n = 12
    ones = torch.ones(n, 1, dtype=torch.float64)
    expected = (
        torch.trace(k @ l_)
        + (ones.T @ k @ ones) * (ones.T @ l_ @ ones) / ((n - 1) * (n - 2))
        - 2 / (n - 2) * (ones.T @ k @ l_ @ ones)
    ) / (n * (n - 3))
    assert unbiased_hsic(x.double() @ x.double().T, y.double() @ y.double().T) == pytest.approx(
        float(expected)
    )


def test_matrix_accumulator_and_full_batch_matrix_agree_with_pairwise_values() -> None:
    g = torch.Generator().manual_seed(2)
    base = torch.randn(64, 16, generator=g)
    xs = [base, base @ torch.randn(16, 8, generator=g), torch.randn(64, 10, generator=g)]
    ys = [base[:, :5], torch.relu(base)]
    acc = MinibatchCKAMatrix()
    for start in range(0, 64, 32):
        acc.update([x[start : start + 32] for x in xs], [y[start : start + 32] for y in ys])
    matrix = acc.compute()
    assert matrix.shape == (3, 2) and matrix.dtype == torch.float64
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert matrix[i, j] == pytest.approx(_minibatch(x, y, 32), abs=1e-12)
    linear = cka_matrix(xs, ys)
    debiased = cka_matrix(xs, ys, debiased=True)
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            assert linear[i, j] == pytest.approx(linear_cka(x, y), abs=1e-10)
            assert debiased[i, j] == pytest.approx(debiased_cka(x, y), abs=1e-10)


def test_bad_shapes_are_rejected() -> None:
    with pytest.raises(ValueError, match="same inputs"):
        linear_cka(torch.randn(10, 3), torch.randn(11, 3))
    with pytest.raises(ValueError, match="at least 4 samples"):
        MinibatchCKA().update(torch.randn(3, 5), torch.randn(3, 5))
    with pytest.raises(ValueError, match="call update"):
        MinibatchCKA().compute()
