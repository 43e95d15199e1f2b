"""The autoencoder model: shapes, padding, positions, init, halo windows, paper-preset size."""

from __future__ import annotations

import math

import pytest
import torch

from geosane.autoencoder import (
    ModelConfig,
    WeightAutoencoder,
    decode_sequence,
    encode_sequence,
    halo_windows,
    load_autoencoder_config,
)


def _config(**kw) -> ModelConfig:
    base = dict(d_t=16, d_model=32, n_heads=2, n_layers=2, lat_dim=8, window=12, max_layers=8, max_chunks=8,
                proj_hidden=16, proj_dim=4)
    return ModelConfig(**{**base, **kw})


def _batch(b: int, w: int, d_t: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    n = torch.arange(start, start + w).expand(b, w)
    positions = torch.stack([n, n // 5, n % 5], dim=-1)
    return torch.randn(b, w, d_t), positions, (n // 5) % 3


def test_shapes_and_projection() -> None:
    model = WeightAutoencoder(_config())
    x, pos, typ = _batch(3, 12, 16)
    recon, z = model(x, pos, typ)
    assert z.shape == (3, 12, 8) and recon.shape == (3, 12, 16)
    assert model.project(z).shape == (3, 4)
    assert torch.allclose(model.decode(model.encode(x, pos, typ), pos, typ), recon)


def test_gpt2_initialisation() -> None:
    cfg = _config(d_model=64, n_layers=4)
    model = WeightAutoencoder(cfg)
    block = model.encoder.blocks[0]
    assert block.attn.qkv.bias is None and block.ln_1.bias is None  # bias-free blocks
    assert abs(block.attn.qkv.weight.std().item() - 0.02) < 0.003
    residual = torch.cat([b.mlp.proj.weight.flatten() for b in model.encoder.blocks])
    assert abs(residual.std().item() - 0.02 / math.sqrt(2 * cfg.n_layers)) < 0.001


def test_padding_tokens_do_not_change_valid_outputs() -> None:
    model = WeightAutoencoder(_config()).eval()
    x, pos, typ = _batch(2, 12, 16)
    valid = torch.ones(2, 12, dtype=torch.bool)
    valid[:, 9:] = False
    z1 = model.encode(x, pos, typ, valid)
    x2 = x.clone()
    x2[:, 9:] = 100 * torch.randn(2, 3, 16)
    z2 = model.encode(x2, pos, typ, valid)
    assert torch.allclose(z1[:, :9], z2[:, :9], atol=1e-5)
    z3 = model.encode(x2, pos, typ)  # without the mask, padding leaks in: the mask is what protects
    assert not torch.allclose(z1[:, :9], z3[:, :9], atol=1e-3)


def test_window_relative_n_is_shift_invariant() -> None:
    model = WeightAutoencoder(_config()).eval()
    x, pos, typ = _batch(1, 12, 16)
    shifted = pos.clone()
    shifted[..., 0] += 100_000  # far beyond any table: the window-relative n is unchanged
    assert torch.allclose(model.encode(x, pos, typ), model.encode(x, shifted, typ))
    glob = WeightAutoencoder(_config(n_index="global")).eval()
    assert not torch.allclose(glob.encode(x, pos, typ), glob.encode(x, shifted, typ))


@pytest.mark.parametrize("encoding", ["sinusoidal", "hybrid"])
def test_positions_beyond_tables_get_distinct_codes(encoding: str) -> None:
    model = WeightAutoencoder(_config(position_encoding=encoding)).eval()
    embed = model.encoder.embed
    layers = torch.tensor([[3, 500, 501, 70_000]])
    codes = embed.layer(layers)[0]
    assert torch.isfinite(codes).all()
    distances = torch.cdist(codes, codes)
    assert (distances + torch.eye(4)).min() > 1e-4  # every layer index has its own code


def test_learned_tables_outside_range_are_zero_not_garbage() -> None:
    model = WeightAutoencoder(_config(position_encoding="learned"))
    codes = model.encoder.embed.layer(torch.tensor([2, 8, 9]))
    assert codes[0].abs().sum() > 0 and codes[1:].abs().sum() == 0


def test_halo_windows_tile_the_sequence() -> None:
    for n, w, h in [(1, 8, 2), (7, 8, 2), (8, 8, 2), (9, 8, 2), (50, 8, 2), (50, 8, 0), (33, 12, 3)]:
        spans = halo_windows(n, w, h)
        kept = [i for _, a, b in spans for i in range(a, b)]
        assert kept == list(range(n))
        for start, a, b in spans:
            assert start <= a and b <= start + w and start >= 0 and start + min(w, n) <= max(n, w)
    with pytest.raises(ValueError):
        halo_windows(10, 8, 4)


def test_encode_sequence_matches_windows() -> None:
    torch.manual_seed(0)
    model = WeightAutoencoder(_config()).eval()
    n = 40
    tokens = torch.randn(n, 16)
    idx = torch.arange(n)
    positions = torch.stack([idx, idx // 5, idx % 5], dim=-1)
    typ = (idx // 5) % 3
    z = encode_sequence(model, tokens, positions, typ, halo=3)
    assert z.shape == (n, 8)
    # the centre of a window equals the direct encoding of that window
    for start, a, b in halo_windows(n, 12, 3):
        direct = model.encode(tokens[None, start : start + 12], positions[None, start : start + 12],
                              typ[None, start : start + 12])[0]
        assert torch.allclose(z[a:b], direct[a - start : b - start], atol=1e-5)
    recon = decode_sequence(model, z, positions, typ, halo=3)
    assert recon.shape == (n, 16)
    # a model shorter than the window: one padded window, independent of the padding
    short = encode_sequence(model, tokens[:5], positions[:5], typ[:5])
    assert torch.allclose(short, model.encode(tokens[None, :5], positions[None, :5], typ[None, :5])[0], atol=1e-5)


def test_paper_preset_is_about_900m_parameters_without_allocating() -> None:
    cfg = load_autoencoder_config("paper")
    with torch.device("meta"):
        model = WeightAutoencoder(cfg.model)
    count = model.num_parameters()
    assert 850e6 < count < 950e6, count
    assert next(model.parameters()).is_meta


def test_small_and_tiny_presets_build() -> None:
    for name in ("tiny", "small"):
        cfg = load_autoencoder_config(name)
        with torch.device("meta"):
            assert WeightAutoencoder(cfg.model).num_parameters() > 0
