"""Reconstruction loss (run-time normalisation, padding never counts), NT-Xent, noise views."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from geosane.autoencoder import AutoencoderConfig, ModelConfig, noisy_view, nt_xent, reconstruction_loss
from geosane.autoencoder.module import AutoencoderModule


def _data(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b, w, d = 4, 10, 12
    scales = torch.tensor([0.05, 0.2, 1.0, 3.0]).repeat_interleave(3)[:w]  # layers of very different scale
    target = torch.randn(b, w, d, generator=g) * scales[None, :w, None]
    pred = target + 0.1 * torch.randn(b, w, d, generator=g) * scales[None, :w, None]
    mask = torch.ones(b, w, d, dtype=torch.bool)
    mask[:, -1, 5:] = False  # a partly padded last token
    valid = torch.ones(b, w, dtype=torch.bool)
    valid[0, 7:] = False  # a window running past its model's end
    layer = torch.arange(w).div(3, rounding_mode="floor").expand(b, w)
    return {"pred": pred, "target": target, "mask": mask, "valid": valid, "layer": layer}


@pytest.mark.parametrize("mode", ["batch", "token", "layer"])
def test_padding_never_contributes(mode: str) -> None:
    d = _data()
    base = reconstruction_loss(d["pred"], d["target"], d["mask"], d["valid"], mode, d["layer"])
    pred, target = d["pred"].clone(), d["target"].clone()
    padded = ~(d["mask"] & d["valid"][..., None])
    pred[padded] = 1e3 * torch.randn(int(padded.sum()))
    target[padded] = -1e3
    changed = reconstruction_loss(pred, target, d["mask"], d["valid"], mode, d["layer"])
    assert torch.allclose(base, changed)
    real_changed = d["pred"].clone()
    real_changed[1, 0, 0] += 1.0
    assert not torch.allclose(base, reconstruction_loss(real_changed, d["target"], d["mask"], d["valid"], mode, d["layer"]))


def test_modes_normalise_by_run_time_statistics() -> None:
    d = _data()
    args = (d["mask"], d["valid"])
    for mode in ("batch", "token", "layer"):
        loss = reconstruction_loss(d["pred"], d["target"], *args, mode, d["layer"])
        assert reconstruction_loss(d["target"], d["target"], *args, mode, d["layer"]) == 0
        scaled = reconstruction_loss(7 * d["pred"], 7 * d["target"], *args, mode, d["layer"])
        assert torch.allclose(loss, scaled, rtol=1e-4)  # unit-free
    # batch mode: plain masked MSE divided by the variance of the real target entries
    real = d["mask"] & d["valid"][..., None]
    var = d["target"][real].var(unbiased=False)
    sq = (d["pred"] - d["target"]) ** 2 * real
    expected = (sq.sum((1, 2)) / real.sum((1, 2))).mean() / var  # windows weigh the same
    assert torch.allclose(reconstruction_loss(d["pred"], d["target"], *args, "batch"), expected, rtol=1e-4)
    # the same absolute error everywhere: negligible for the batch statistics (dominated by the
    # large layers), but as large as the smallest layers themselves for per-layer statistics
    pred = d["target"] + 0.05 * torch.randn(d["target"].shape, generator=torch.Generator().manual_seed(2))
    batch = reconstruction_loss(pred, d["target"], *args, "batch")
    layer = reconstruction_loss(pred, d["target"], *args, "layer", d["layer"])
    token = reconstruction_loss(pred, d["target"], *args, "token")
    assert batch < 5e-3 and layer > 0.1 and token > 0.1


@pytest.mark.parametrize("mode", ["token", "layer"])
def test_fixed_reference_variance_makes_the_loss_a_mean_over_windows(mode: str) -> None:
    d = _data()
    d["target"][0, 2] = 1.0  # a constant token (an untrained norm scale): its variance is floored
    d["mask"][2, -1, 1:] = False  # a token with one real entry: no spread of its own
    halves = [{k: v[:2] for k, v in d.items()}, {k: v[2:] for k, v in d.items()}]

    def loss(part: dict[str, torch.Tensor], reference: float | None) -> torch.Tensor:
        return reconstruction_loss(part["pred"], part["target"], part["mask"], part["valid"], mode, part["layer"],
                                   1e-4, reference)

    whole = loss(d, 0.5)
    assert torch.allclose(whole, (loss(halves[0], 0.5) + loss(halves[1], 0.5)) / 2, rtol=1e-6)
    # with the batch's own variance as reference the floored tokens depend on the other windows
    split = (loss(halves[0], None) + loss(halves[1], None)) / 2
    assert not torch.allclose(loss(d, None), split, rtol=1e-3)


def _nt_xent_reference(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    z = [F.normalize(v, dim=0) for v in torch.cat([a, b])]
    n = a.shape[0]
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denominator = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denominator)
    return torch.tensor(total / (2 * n))


def test_nt_xent_matches_definition_and_temperature() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    for t in (0.1, 0.5, 1.0):
        assert torch.allclose(nt_xent(a, b, t), _nt_xent_reference(a, b, t), atol=1e-4)
    aligned = nt_xent(a, a + 0.01 * b, 0.1)
    assert aligned < nt_xent(a, b, 0.1)
    assert nt_xent(a, 3 * a, 0.1) == pytest.approx(float(nt_xent(a, a, 0.1)), abs=1e-5)  # cosine: scale-free
    with pytest.raises(ValueError):
        nt_xent(a, b[:4])


def test_noisy_views_keep_padding_zero_and_are_seeded() -> None:
    x = torch.randn(2, 5, 6)
    mask = torch.rand(2, 5, 6) > 0.3
    v1 = noisy_view(x * mask, mask, 0.1, 0.01, torch.Generator().manual_seed(3))
    v2 = noisy_view(x * mask, mask, 0.1, 0.01, torch.Generator().manual_seed(3))
    assert torch.equal(v1, v2) and (v1[~mask] == 0).all()
    rel = ((v1 - x)[mask] / x[mask]).abs().median()
    assert 0.01 < rel < 0.3
    assert torch.equal(noisy_view(x, mask, 0.0, 0.0), x * mask)


def test_full_training_loss_ignores_padding() -> None:
    """Through the model: changing padded entries and tokens past the end changes nothing."""
    cfg = AutoencoderConfig(model=ModelConfig(d_t=12, d_model=32, n_heads=2, n_layers=1, lat_dim=8, window=10,
                                              proj_hidden=16, proj_dim=4))
    module = AutoencoderModule(cfg)
    d = _data()
    n = torch.arange(10).expand(4, 10)
    batch = {
        "tokens": d["target"] * d["mask"], "mask": d["mask"], "valid": d["valid"],
        "positions": torch.stack([n, d["layer"], n % 3], dim=-1), "layer_type": d["layer"] % 4,
        "sample": torch.arange(4),
    }
    base = module.compute_loss(batch)
    other = dict(batch)
    tokens = batch["tokens"].clone()
    padded = ~(d["mask"] & d["valid"][..., None])
    tokens[padded] = 50 * torch.randn(int(padded.sum()))
    other["tokens"] = tokens
    changed = module.compute_loss(other)
    for key in ("loss", "rec", "con"):
        assert torch.allclose(base[key], changed[key], atol=1e-5), key
    assert base["con"] > 0  # the contrastive term is really there
