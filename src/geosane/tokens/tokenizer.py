"""Weights <-> tokens: every tensor of a state dict accounted for, round trip bitwise exact.

:func:`tokenize` turns a state dict into a :class:`TokenizedModel`; :func:`detokenize` turns it
back. The format is described in ``docs/tokens.md``; in short:

- A *layer* is one learnable tensor, or a ``<m>.weight`` plus its matching ``<m>.bias``. It becomes
  a 2-D matrix ``[rows, width]``: ``[out, in*kh*kw]`` for convolutions, ``[out, in]`` for linear
  layers, ``[C, 1]`` for 1-D tensors, ``[1, 1]`` for scalars, ``[N, D]`` for a position table
  ``[1, N, D]`` (leading singleton dims of position/class tables are dropped); the bias, when
  present, is appended as one more column (a norm's scale and shift become ``[C, 2]``).
- ``dense`` mode cuts the flattened matrix into contiguous chunks of ``token_size`` values (the
  last one zero-padded), ``k`` = chunk index; ``row`` mode zero-pads each row to a multiple of
  ``token_size`` and cuts it, ``k`` = row index.
- ``positions[:, 0]`` is the global token index ``n``, ``[:, 1]`` the layer index ``l`` (layers in
  state-dict order), ``[:, 2]`` the intra-layer index ``k``; ``mask`` marks real (non-padding)
  entries; ``layer_type`` holds :class:`~geosane.tokens.layer_types.LayerType` codes.
- Tensors that are not tokenized are *carried* unchanged (non-learnable buffers, integer tensors,
  dtypes that float32 cannot hold exactly such as float64, excluded names) and a second name for
  the same storage (tied weights) is recorded as *tied* to the first.

The work is vectorized per tensor: each tensor is copied with one ``copy_`` into a view of a
single preallocated token buffer, and masks/positions are computed for all tokens at once.
"""

from __future__ import annotations

import fnmatch
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch
from torch import nn

from geosane.errors import cli_flags
from geosane.tokens.layer_types import LayerType, infer_layer_type, is_embedding_name, module_layer_types
from geosane.tokens.settings import (
    DEFAULT_BUFFER_PATTERNS,
    DEFAULT_TOKEN_SIZE,
    MODES,
    TokenizerError,
    _check_settings,
)

__all__ = [
    "DEFAULT_BUFFER_PATTERNS",
    "DEFAULT_TOKEN_SIZE",
    "MODES",
    "TOKEN_DTYPES",
    "TensorLayout",
    "TokenizedModel",
    "TokenizerError",
    "detokenize",
    "tokenize",
]

Mode = Literal["dense", "row"]
Kind = Literal["tokenized", "carried", "tied"]
# dtypes whose every value float32 holds exactly (so the round trip through tokens is bitwise exact)
TOKEN_DTYPES: dict[torch.dtype, str] = {
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
}


@dataclass(frozen=True)
class TensorLayout:
    """Where one state-dict tensor lives.

    ``kind`` is ``tokenized`` (in the token sequence), ``carried`` (kept as is in
    ``TokenizedModel.carried``, ``reason`` says why) or ``tied`` (same storage as ``tied_to``).
    Tokenized tensors occupy columns ``[col, col + cols)`` of their layer's ``[rows, width]``
    matrix, which fills tokens ``[start, stop)``; ``layer`` is the layer index ``l``.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: Kind
    layer: int | None = None
    start: int | None = None
    stop: int | None = None
    rows: int | None = None
    width: int | None = None
    col: int | None = None
    cols: int | None = None
    layer_type: str | None = None
    tied_to: str | None = None
    reason: str | None = None

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if k == "shape" else v) for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorLayout:
        return cls(**{**data, "shape": tuple(int(s) for s in data["shape"])})


@dataclass(repr=False)
class TokenizedModel:
    """A model as tokens: see the module docstring and ``docs/tokens.md``.

    ``tokens`` f32 ``[N, d_t]``, ``mask`` bool ``[N, d_t]``, ``positions`` i64 ``[N, 3]`` = (n, l, k),
    ``layer_type`` i64 ``[N]``, ``layout`` (every state-dict name, in order, to its
    :class:`TensorLayout`) and ``carried`` (the tensors that are not tokenized, by name).
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    layer_type: torch.Tensor
    layout: dict[str, TensorLayout]
    carried: dict[str, torch.Tensor]
    token_size: int
    mode: str

    def __repr__(self) -> str:
        counts = self.summary()
        return (
            f"TokenizedModel({counts['tokens']} tokens x {self.token_size} ({self.mode}), "
            f"{counts['layers']} layers; tensors: {counts['tokenized_tensors']} tokenized, "
            f"{counts['carried_tensors']} carried, {counts['tied_tensors']} tied)"
        )

    @property
    def num_tokens(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def num_layers(self) -> int:
        return 1 + max((e.layer for e in self.layout.values() if e.layer is not None), default=-1)

    def names(self, kind: Kind) -> list[str]:
        """State-dict names of one kind (``tokenized``, ``carried`` or ``tied``), in order."""
        return [name for name, entry in self.layout.items() if entry.kind == kind]

    def summary(self) -> dict[str, int]:
        """Counts of tensors and values per kind, tokens and layers."""
        out = {"tokens": self.num_tokens, "layers": self.num_layers}
        for kind in ("tokenized", "carried", "tied"):
            entries = [e for e in self.layout.values() if e.kind == kind]
            out[f"{kind}_tensors"] = len(entries)
            out[f"{kind}_values"] = sum(e.numel for e in entries)
        return out

    def layout_json(self, **extra: Any) -> str:
        """The layout, token size and mode (plus ``extra`` fields) as one JSON string."""
        return json.dumps(
            {
                **extra,
                "token_size": self.token_size,
                "mode": self.mode,
                "tensors": [e.to_dict() for e in self.layout.values()],
            },
            separators=(",", ":"),
        )

    def with_tokens(self, tokens: torch.Tensor) -> TokenizedModel:
        """The same layout with other token values (e.g. generated ones); shapes must match."""
        if tuple(tokens.shape) != tuple(self.tokens.shape):
            raise TokenizerError(
                f"tokens of shape {tuple(tokens.shape)} do not fit this layout {tuple(self.tokens.shape)}"
            )
        return TokenizedModel(
            tokens,
            self.mask,
            self.positions,
            self.layer_type,
            self.layout,
            self.carried,
            self.token_size,
            self.mode,
        )


# ---------------------------------------------------------------------------------------------
# planning: which tensors are tokenized, and how they form layers


@dataclass
class _Layer:
    members: list[str]  # the main tensor first, then an appended bias
    widths: list[int]
    rows: int
    layer_type: LayerType
    start: int = 0
    count: int = 0

    @property
    def width(self) -> int:
        return sum(self.widths)


def _matches(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _storage_key(t: torch.Tensor) -> tuple[Any, ...] | None:
    if t.numel() == 0:
        return None
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, t.device)


def _carry_reason(
    name: str,
    t: torch.Tensor,
    include: Sequence[str] | None,
    exclude: Sequence[str],
    buffers: Sequence[str],
    module_info: Mapping[str, tuple[LayerType | None, bool, bool]],
) -> str | None:
    """Why ``name`` is carried rather than tokenized, or None to tokenize it."""
    if t.dtype not in TOKEN_DTYPES:
        dtype = str(t.dtype).removeprefix("torch.")
        if t.is_floating_point() or t.is_complex():
            return f"dtype {dtype} is not exactly representable in float32 tokens"
        return f"non-float tensor ({dtype})"
    if t.numel() == 0:
        return "empty"
    if _matches(name, exclude):
        return "excluded"
    if include is not None:
        return None if _matches(name, include) else "not included"
    if name in module_info:
        return None if module_info[name][1] else "buffer"
    return "buffer" if _matches(name, buffers) else None


def _matrix_rows_cols(name: str, shape: tuple[int, ...]) -> tuple[int, int]:
    """The 2-D matrix ``[rows, cols]`` a tensor becomes (see the module docstring)."""
    if len(shape) > 2 and is_embedding_name(name):
        while len(shape) > 2 and shape[0] == 1:
            shape = shape[1:]
    if not shape:
        return 1, 1
    return shape[0], math.prod(shape[1:])


def _bias_name(name: str) -> str | None:
    if name == "weight":
        return "bias"
    if name.endswith(".weight"):
        return name[: -len("weight")] + "bias"
    return None


def _plan_layers(
    state_dict: Mapping[str, torch.Tensor],
    tokenized: list[str],
    module_info: Mapping[str, tuple[LayerType | None, bool, bool]],
) -> list[_Layer]:
    """Group tokenized tensors into layers (a weight with its matching bias), in state-dict order."""
    selected = set(tokenized)
    bias_of: dict[str, str] = {}
    for name in tokenized:
        bias = _bias_name(name)
        if bias is None or bias not in selected or module_info.get(name, (None, True, False))[2]:
            continue
        rows, _ = _matrix_rows_cols(name, tuple(state_dict[name].shape))
        if tuple(state_dict[bias].shape) == (rows,):
            bias_of[name] = bias
    paired = set(bias_of.values())
    keys = state_dict.keys()
    layers = []
    for name in tokenized:
        if name in paired:
            continue
        shape = tuple(int(s) for s in state_dict[name].shape)
        rows, cols = _matrix_rows_cols(name, shape)
        members, widths = [name], [cols]
        if name in bias_of:
            members.append(bias_of[name])
            widths.append(1)
        layer_type = module_info.get(name, (None, True, False))[0]
        if layer_type is None:
            layer_type = infer_layer_type(name, shape, keys)
        layers.append(_Layer(members, widths, rows, layer_type))
    return layers


def _token_count(rows: int, width: int, token_size: int, mode: str) -> int:
    if mode == "dense":
        return -(-rows * width // token_size)
    return rows * -(-width // token_size)


def _layer_matrix(segment: torch.Tensor, rows: int, width: int, mode: str) -> torch.Tensor:
    """The ``[rows, width]`` view of a layer's token segment (padding excluded)."""
    if mode == "dense":
        return segment.view(-1)[: rows * width].view(rows, width)
    return segment.view(rows, -1)[:, :width]


def _zero_padding(segment: torch.Tensor, rows: int, width: int, mode: str) -> None:
    if mode == "dense":
        segment.view(-1)[rows * width :].zero_()
    else:
        segment.view(rows, -1)[:, width:].zero_()


def _nonfinite_error(name: str, t: torch.Tensor) -> TokenizerError:
    bad = ~torch.isfinite(t.detach())
    kinds = [k for k, present in (("NaN", torch.isnan(t).any()), ("Inf", torch.isinf(t).any())) if present]
    return TokenizerError(
        f"tensor '{name}' holds {int(bad.sum())} non-finite values ({'/'.join(kinds)}); "
        "fix the checkpoint or pass allow_nonfinite=True to tokenize it anyway",
        flags=cli_flags("allow_nonfinite"),
    )


# ---------------------------------------------------------------------------------------------
# public API


def tokenize(
    state_dict: Mapping[str, torch.Tensor] | nn.Module,
    token_size: int = DEFAULT_TOKEN_SIZE,
    mode: Mode = "dense",
    *,
    include: Sequence[str] | None = None,
    exclude: Sequence[str] = (),
    buffers: Sequence[str] = DEFAULT_BUFFER_PATTERNS,
    module: nn.Module | None = None,
    allow_nonfinite: bool = False,
) -> TokenizedModel:
    """Tokenize a state dict (or an ``nn.Module``'s) into a :class:`TokenizedModel`.

    ``include`` / ``exclude`` are glob patterns on tensor names (``fnmatch``): excluded tensors are
    carried; if ``include`` is given only matching tensors are tokenized (an explicit include
    also tokenizes a buffer). Without ``include``, non-learnable tensors are carried: the
    module's registered buffers when a ``module`` is given (or ``state_dict`` is a module),
    otherwise names matching ``buffers`` (BatchNorm running statistics by default). The module
    also decides layer types from its submodules' classes; without it names and shapes do
    (:mod:`geosane.tokens.layer_types`). Non-finite values raise :class:`TokenizerError` naming
    the tensor unless ``allow_nonfinite``.
    """
    _check_settings(token_size, mode)
    if isinstance(state_dict, nn.Module):
        module = state_dict if module is None else module
        state_dict = state_dict.state_dict()
    if not state_dict:
        raise TokenizerError("the state dict is empty: there is nothing to tokenize")
    for name, t in state_dict.items():
        if not isinstance(t, torch.Tensor):
            raise TokenizerError(f"state dict entry '{name}' is a {type(t).__name__}, not a tensor")
        if t.device.type == "meta":
            raise TokenizerError(f"tensor '{name}' is on the meta device: it has no values to tokenize")
    module_info = module_layer_types(module) if module is not None else {}

    layout: dict[str, TensorLayout] = {}
    carried: dict[str, torch.Tensor] = {}
    owner: dict[tuple[Any, ...], str] = {}
    tokenized: list[str] = []
    for name, t in state_dict.items():
        key = _storage_key(t)
        if key is not None and key in owner:
            layout[name] = TensorLayout(
                name, tuple(t.shape), _dtype_name(t.dtype), "tied", tied_to=owner[key]
            )
            continue
        if key is not None:
            owner[key] = name
        reason = _carry_reason(name, t, include, exclude, buffers, module_info)
        if reason is None:
            tokenized.append(name)
            continue
        if not allow_nonfinite and (t.is_floating_point() or t.is_complex()) and not torch.isfinite(t).all():
            raise _nonfinite_error(name, t)
        carried[name] = t.detach()
        layout[name] = TensorLayout(name, tuple(t.shape), _dtype_name(t.dtype), "carried", reason=reason)
    if not tokenized:
        raise TokenizerError(
            f"no tensor of the {len(state_dict)} in the state dict is selected for tokenization "
            f"(include={list(include) if include is not None else None}, exclude={list(exclude)})"
        )

    layers = _plan_layers(state_dict, tokenized, module_info)
    start = 0
    for layer in layers:
        layer.start, layer.count = start, _token_count(layer.rows, layer.width, token_size, mode)
        start += layer.count
    tokens = torch.empty((start, token_size), dtype=torch.float32)
    for index, layer in enumerate(layers):
        segment = tokens[layer.start : layer.start + layer.count]
        _zero_padding(segment, layer.rows, layer.width, mode)
        matrix = _layer_matrix(segment, layer.rows, layer.width, mode)
        col = 0
        for name, cols in zip(layer.members, layer.widths, strict=True):
            source = state_dict[name].detach()
            matrix[:, col : col + cols].copy_(source.reshape(layer.rows, cols))
            layout[name] = TensorLayout(
                name,
                tuple(source.shape),
                _dtype_name(source.dtype),
                "tokenized",
                layer=index,
                start=layer.start,
                stop=layer.start + layer.count,
                rows=layer.rows,
                width=layer.width,
                col=col,
                cols=cols,
                layer_type=layer.layer_type.label,
            )
            col += cols
        # one fast reduction per layer while it is in cache; a non-finite sum names the culprit
        if not allow_nonfinite and not math.isfinite(float(segment.sum())):
            for name in layer.members:
                if not torch.isfinite(state_dict[name]).all():
                    raise _nonfinite_error(name, state_dict[name])
    mask, positions, layer_type = _token_metadata(layers, token_size, mode)
    ordered = {name: layout[name] for name in state_dict}
    return TokenizedModel(tokens, mask, positions, layer_type, ordered, carried, token_size, mode)


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _token_metadata(
    layers: Sequence[_Layer], token_size: int, mode: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mask, positions (n, l, k) and layer types of all tokens: whole-buffer fills plus per-layer views."""
    num_tokens = sum(layer.count for layer in layers)
    mask = torch.ones((num_tokens, token_size), dtype=torch.bool)
    positions = torch.empty((num_tokens, 3), dtype=torch.long)
    positions[:, 0] = torch.arange(num_tokens)
    counts = torch.tensor([layer.count for layer in layers], dtype=torch.long)
    positions[:, 1] = torch.repeat_interleave(torch.arange(len(layers)), counts)
    types = torch.tensor([int(layer.layer_type) for layer in layers], dtype=torch.long)
    layer_type = torch.repeat_interleave(types, counts)
    for layer in layers:
        stop = layer.start + layer.count
        _zero_padding(mask[layer.start : stop], layer.rows, layer.width, mode)  # padding -> False
        k = positions[layer.start : stop, 2]
        if mode == "dense":
            k.copy_(torch.arange(layer.count))
        else:
            k.view(layer.rows, -1).copy_(torch.arange(layer.rows)[:, None])
    return mask, positions, layer_type


def detokenize(tm: TokenizedModel, tokens: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The state dict back from ``tm`` (bitwise identical to the tokenized one; same key order).

    ``tokens`` replaces ``tm.tokens`` (e.g. generated values on the same layout). Tokenized tensors
    are cast back to their original dtype; carried tensors are copied; tied names share storage.
    """
    tokens = tm.tokens if tokens is None else tm.with_tokens(tokens).tokens
    out: dict[str, torch.Tensor] = {}
    for name, entry in tm.layout.items():
        if entry.kind == "tied":
            out[name] = out[entry.tied_to]  # type: ignore[index]
        elif entry.kind == "carried":
            out[name] = tm.carried[name].clone()
        else:
            assert entry.start is not None and entry.rows is not None and entry.width is not None
            assert entry.col is not None and entry.cols is not None
            segment = tokens[entry.start : entry.stop]
            matrix = _layer_matrix(segment, entry.rows, entry.width, tm.mode)
            tensor = torch.empty(entry.shape, dtype=getattr(torch, entry.dtype), device=tokens.device)
            tensor.view(entry.rows, entry.cols).copy_(matrix[:, entry.col : entry.col + entry.cols])
            out[name] = tensor
    return out
