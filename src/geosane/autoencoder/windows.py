"""Encode and decode a whole model's token sequence with overlapping ("halo") windows.

The autoencoder sees windows of ``W`` tokens. A sequence of any length ``N`` is cut into windows
whose centres of ``W - 2 * halo`` tokens tile the sequence; every window also sees ``halo`` tokens
of context on each side (fewer at the ends, where the window is shifted to stay inside the
sequence), and only the centre's outputs are kept. A sequence shorter than ``W`` is one padded
window whose padding is masked out of attention.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from geosane.autoencoder.model import WeightAutoencoder

__all__ = ["decode_sequence", "encode_sequence", "halo_windows"]


def halo_windows(num_tokens: int, window: int, halo: int) -> list[tuple[int, int, int]]:
    """``(start, keep_from, keep_to)`` per window: window covers ``[start, start + window)``, and its
    outputs for sequence positions ``[keep_from, keep_to)`` are kept (they tile ``[0, num_tokens)``)."""
    if window < 1 or halo < 0 or window - 2 * halo < 1:
        raise ValueError(f"need window > 2 * halo >= 0, got window={window}, halo={halo}")
    core = window - 2 * halo
    last_start = max(num_tokens - window, 0)
    spans = []
    for keep_from in range(0, num_tokens, core):
        keep_to = min(keep_from + core, num_tokens)
        start = min(max(keep_from - halo, 0), last_start)
        spans.append((start, keep_from, keep_to))
    return spans


@contextlib.contextmanager
def _eval_mode(model: torch.nn.Module) -> Iterator[None]:
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _run_windows(
    fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    positions: torch.Tensor,
    layer_type: torch.Tensor,
    window: int,
    halo: int,
    batch_size: int,
) -> torch.Tensor:
    num_tokens = inputs.shape[0]
    spans = halo_windows(num_tokens, window, halo)
    length = min(window, num_tokens)
    out: torch.Tensor | None = None
    for i in range(0, len(spans), batch_size):
        chunk = spans[i : i + batch_size]
        x = torch.stack([inputs[s : s + length] for s, _, _ in chunk])
        pos = torch.stack([positions[s : s + length] for s, _, _ in chunk])
        typ = torch.stack([layer_type[s : s + length] for s, _, _ in chunk])
        valid = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if length < window:  # one short sequence: pad to the window and mask the padding out
            pad = window - length
            x = torch.nn.functional.pad(x, (0, 0, 0, pad))
            pos = torch.nn.functional.pad(pos, (0, 0, 0, pad))
            typ = torch.nn.functional.pad(typ, (0, pad))
            valid = torch.nn.functional.pad(valid, (0, pad), value=False)
        y = fn(x, pos, typ, valid)
        if out is None:
            out = y.new_empty(num_tokens, y.shape[-1])
        for row, (start, keep_from, keep_to) in enumerate(chunk):
            out[keep_from:keep_to] = y[row, keep_from - start : keep_to - start]
    if out is None:
        raise ValueError("cannot encode or decode an empty token sequence")
    return out


@torch.no_grad()
def encode_sequence(
    model: WeightAutoencoder,
    tokens: torch.Tensor,
    positions: torch.Tensor,
    layer_type: torch.Tensor,
    mask: torch.Tensor | None = None,
    halo: int | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """Latents ``[N, lat_dim]`` of a whole token sequence ``[N, d_t]`` (halo windows, centres kept).

    ``mask`` (``[N, d_t]``, True = real entry) zeroes padding entries first, as in training.
    ``halo`` defaults to a quarter of the model's window.
    """
    window = model.config.window
    halo = window // 4 if halo is None else halo
    device = next(model.parameters()).device
    tokens = tokens.to(device, torch.float32)
    if mask is not None:
        tokens = tokens * mask.to(device)
    with _eval_mode(model):
        return _run_windows(
            model.encode, tokens, positions.to(device), layer_type.to(device), window, halo, batch_size
        )


@torch.no_grad()
def decode_sequence(
    model: WeightAutoencoder,
    z: torch.Tensor,
    positions: torch.Tensor,
    layer_type: torch.Tensor,
    halo: int | None = None,
    batch_size: int = 32,
) -> torch.Tensor:
    """Tokens ``[N, d_t]`` decoded from latents ``[N, lat_dim]`` (halo windows, centres kept)."""
    window = model.config.window
    halo = window // 4 if halo is None else halo
    device = next(model.parameters()).device
    with _eval_mode(model):
        return _run_windows(
            model.decode, z.to(device, torch.float32), positions.to(device), layer_type.to(device),
            window, halo, batch_size,
        )
