"""Property tests: any state dict of random shapes, dtypes and bit patterns round-trips exactly."""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geosane.tokens import detokenize, tokenize

from .tokens_testutil import assert_bitwise_equal

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int8, torch.bool]
TOKEN_DTYPES = {torch.float32, torch.float16, torch.bfloat16}
_BITS = {
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
    torch.float64: torch.int64,
}


@st.composite
def tensors(draw: st.DrawFn, shape: tuple[int, ...] | None = None) -> torch.Tensor:
    """A tensor with arbitrary bit patterns (subnormals, -0.0, huge values; finite floats only)."""
    if shape is None:
        shape = tuple(draw(st.lists(st.integers(0, 5), min_size=0, max_size=4)))
    dtype = draw(st.sampled_from(DTYPES))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    numel = math.prod(shape)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    if dtype in _BITS:
        bits = _BITS[dtype]
        info = torch.iinfo(bits)
        raw = torch.randint(info.min, info.max, (numel,), generator=gen, dtype=torch.int64).to(bits)
        values = raw.view(dtype)
        values = torch.where(torch.isfinite(values), values, torch.zeros((), dtype=dtype))
        return values.view(shape)
    return torch.randint(-100, 100, shape, generator=gen, dtype=dtype)


@st.composite
def state_dicts(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    """Layers named like real ones; some with a matching bias, some sharing storage (tied)."""
    out: dict[str, torch.Tensor] = {}
    for i in range(draw(st.integers(1, 6))):
        weight = draw(tensors())
        out[f"layer{i}.weight"] = weight
        if weight.ndim >= 1 and draw(st.booleans()):
            out[f"layer{i}.bias"] = draw(tensors(shape=(weight.shape[0],)))
        if draw(st.booleans()):
            out[f"layer{i}.running_mean"] = draw(tensors())
        if draw(st.integers(0, 4)) == 0:
            out[f"alias{i}"] = weight  # a second name for the same storage
    return out


@settings(max_examples=80, deadline=None)
@given(state_dicts(), st.integers(1, 40), st.sampled_from(["dense", "row"]))
def test_any_state_dict_round_trips_bitwise(
    state_dict: dict[str, torch.Tensor], token_size: int, mode: str
) -> None:
    if not any(
        t.dtype in TOKEN_DTYPES and t.numel() and not k.endswith("running_mean")
        for k, t in state_dict.items()
    ):
        state_dict["extra.weight"] = torch.randn(3, 2)
    tm = tokenize(state_dict, token_size, mode)  # type: ignore[arg-type]
    restored = detokenize(tm)
    assert_bitwise_equal(restored, state_dict)

    assert tm.tokens.shape == tm.mask.shape == (tm.num_tokens, token_size)
    assert tm.positions.shape == (tm.num_tokens, 3) and tm.layer_type.shape == (tm.num_tokens,)
    assert torch.equal(tm.positions[:, 0], torch.arange(tm.num_tokens))
    assert bool((tm.positions[1:, 1] - tm.positions[:-1, 1] >= 0).all())  # layers in order
    assert not tm.tokens[~tm.mask].any()  # padding is zero
    tokenized = [e for e in tm.layout.values() if e.kind == "tokenized"]
    assert int(tm.mask.sum()) == sum(e.numel for e in tokenized)  # every real value exactly once
    for name, entry in tm.layout.items():
        if entry.kind == "tied":
            assert restored[name].data_ptr() == restored[entry.tied_to].data_ptr()  # type: ignore[index]
        elif entry.kind == "carried":
            assert (
                state_dict[name].dtype not in TOKEN_DTYPES
                or state_dict[name].numel() == 0
                or (entry.reason == "buffer")
            )


@settings(max_examples=30, deadline=None)
@given(
    st.lists(st.integers(1, 6), min_size=1, max_size=4),
    st.sampled_from([torch.float16, torch.bfloat16]),
    st.integers(1, 20),
)
def test_nonfinite_half_values_survive_when_allowed(
    shape: list[int], dtype: torch.dtype, token_size: int
) -> None:
    values = torch.randn(shape).to(dtype)
    values.view(-1)[0] = float("nan")
    values.view(-1)[-1] = float("-inf")
    restored = detokenize(tokenize({"w": values}, token_size, allow_nonfinite=True))["w"]
    assert restored.dtype == dtype
    both_nan = torch.isnan(restored) & torch.isnan(values)
    assert bool((both_nan | (restored.view(torch.int16) == values.view(torch.int16))).all())
