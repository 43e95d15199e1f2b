"""Helpers shared by the token tests (a uniquely named module, imported by the test files)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import timm
import torch
from torch import nn

from geosane.zoo import ArchSpec, LoadedModel

_BITS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def assert_bitwise_equal(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> None:
    """Same keys in the same order, same dtypes and shapes, identical bits."""
    assert list(a) == list(b)
    for name in a:
        x, y = a[name], b[name]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        if x.dtype in _BITS:
            x, y = x.contiguous().view(_BITS[x.dtype]), y.contiguous().view(_BITS[y.dtype])
        assert torch.equal(x, y), f"{name} differs"


def cast_floats(state_dict: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state_dict.items()}


def timm_model(name: str, **kwargs: Any) -> LoadedModel:
    """A random-init timm model as a LoadedModel with its architecture (extra kwargs allowed)."""
    model = timm.create_model(name, pretrained=False, **kwargs)
    return LoadedModel(
        source=f"timm:{name}",
        state_dict=dict(model.state_dict()),
        arch=ArchSpec("timm", name, kwargs),
        info={"pretrained": False, "num_classes": kwargs.get("num_classes"), "task": "classification"},
    )


class Tiny(nn.Module):
    """A hand-sized model whose tokens can be worked out by hand (see test_tokenizer)."""

    def __init__(self) -> None:
        super().__init__()
        self.pos_embed = nn.Parameter(torch.arange(12, dtype=torch.float32).view(1, 3, 4))
        self.conv = nn.Conv2d(2, 3, kernel_size=2)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(5, 4)


class TiedLM(nn.Module):
    """An embedding whose weight is shared with the output projection."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight
