"""Function-preserving permutations of hidden units in real timm architectures.

Hidden units whose channels are *not* tied to a residual stream can be reordered without changing
what the network computes: permute the rows (output channels) of the layer that produces them,
every channel-wise operation on the way (BatchNorm parameters and running statistics, LayerNorm,
depthwise convolutions, squeeze-excitation gates), and the columns (input channels) of the layer
that consumes them. Such permuted copies of a zoo model are extra positive pairs for the
contrastive loss: same function, different weights.

Discovery walks the module tree and recognises timm's building blocks by class:

- ``Mlp`` / ``ConvMlp`` / ``GluMlp`` / ``SwiGLU`` / ``GlobalResponseNormMlp`` (ViT, Swin, ConvNeXt,
  MLP-Mixer ...): the MLP hidden units between ``fc1`` and ``fc2``;
- ``Attention`` (ViT, DeiT, EVA ...): whole heads, jointly in q, k, v and the output projection;
- ResNet ``BasicBlock`` (``conv1`` -> ``conv2``) and ``Bottleneck`` (``conv1`` -> ``conv2`` and
  ``conv2`` -> ``conv3``) when ``conv2`` is not grouped;
- EfficientNet / MobileNet ``InvertedResidual`` (the expansion channels through the depthwise conv
  and SE), ``EdgeResidual``, ``UniversalInvertedResidual``, and the reduction units inside every
  squeeze-excitation module.

Anything not recognised is left alone, so a permutation is function-preserving by construction;
the tests check it numerically on several architectures. A group is skipped rather than guessed
when a channel-wise module on its path is of an unknown kind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn

__all__ = [
    "Member",
    "PermutationGroup",
    "find_permutation_groups",
    "permute_state_dict",
    "random_permutations",
]


@dataclass(frozen=True)
class Member:
    """A tensor axis permuted by a group: the axis is viewed as ``[repeat, size, block]`` and the
    permutation acts on ``size`` (``repeat`` = 3 for fused q/k/v, ``block`` = head_dim for heads)."""

    key: str
    axis: int
    repeat: int = 1
    block: int = 1


@dataclass(frozen=True)
class PermutationGroup:
    """Units of one hidden layer that may be reordered together; ``members`` lists every tensor axis."""

    name: str
    size: int
    members: tuple[Member, ...]


def _norm_like(module: nn.Module) -> bool:
    """Channel-wise modules whose parameters follow a permutation of their channels."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm):
        return True
    if isinstance(module, nn.GroupNorm):
        return module.num_groups in (1, module.num_channels)
    return type(module).__name__ in {"GlobalResponseNorm", "LayerNorm2d", "RmsNorm", "RmsNorm2d"}


def _channelwise(prefix: str, module: nn.Module | None, size: int) -> list[Member] | None:
    """Members for a channel-wise module on a hidden path, ``[]`` if it has no state, ``None`` if unsafe."""
    if module is None:
        return []
    tensors = [(n, t) for n, t in module.state_dict().items() if t.ndim > 0]
    if not tensors:
        return []
    if not _norm_like(module):
        return None
    members = []
    for name, tensor in tensors:
        axes = [i for i, s in enumerate(tensor.shape) if s == size]
        if len(axes) != 1:
            return None
        members.append(Member(f"{prefix}{name}", axes[0]))
    return members


def _produces(prefix: str, layer: nn.Module, repeat: int = 1, block: int = 1) -> list[Member]:
    """Output-channel members of a conv/linear (weight rows and bias)."""
    out = [Member(f"{prefix}weight", 0, repeat, block)]
    if getattr(layer, "bias", None) is not None:
        out.append(Member(f"{prefix}bias", 0, repeat, block))
    return out


def _is_depthwise(conv: nn.Module, channels: int) -> bool:
    return isinstance(conv, nn.Conv2d) and conv.groups == channels == conv.in_channels == conv.out_channels


def _out_channels(layer: nn.Module) -> int:
    return int(cast(torch.Tensor, layer.weight).shape[0])


class _Builder:
    def __init__(self) -> None:
        self.groups: list[PermutationGroup] = []

    def add(self, name: str, size: int, parts: list[list[Member] | None]) -> None:
        if size < 2 or any(p is None for p in parts):
            return
        members = tuple(m for p in parts for m in p)  # type: ignore[union-attr]
        self.groups.append(PermutationGroup(name, size, members))


# Block handlers take the timm block as ``Any``: its submodules are looked up by name, which
# ``nn.Module.__getattr__`` would type as ``Tensor | Module``.
def _se_path(prefix: str, se: Any, size: int) -> list[Member] | None:
    """Members of a squeeze-excitation module sitting on a hidden path of ``size`` channels."""
    if se is None or not list(se.parameters()):
        return []
    cls = type(se).__name__
    if cls == "SqueezeExcite" and hasattr(se, "conv_reduce"):  # efficientnet blocks
        return [Member(f"{prefix}conv_reduce.weight", 1), *_produces(f"{prefix}conv_expand.", se.conv_expand)]
    if cls == "SEModule" and hasattr(se, "fc1"):  # timm.layers.squeeze_excite
        return [Member(f"{prefix}fc1.weight", 1), *_produces(f"{prefix}fc2.", se.fc2)]
    return None


def _se_internal(builder: _Builder, prefix: str, se: Any) -> None:
    """The reduction units inside a squeeze-excitation module."""
    cls = type(se).__name__
    if cls == "SqueezeExcite" and hasattr(se, "conv_reduce"):
        size = _out_channels(se.conv_reduce)
        builder.add(
            f"{prefix}se", size,
            [_produces(f"{prefix}conv_reduce.", se.conv_reduce), [Member(f"{prefix}conv_expand.weight", 1)]],
        )
    elif cls == "SEModule" and hasattr(se, "fc1"):
        size = _out_channels(se.fc1)
        builder.add(
            f"{prefix}se", size,
            [
                _produces(f"{prefix}fc1.", se.fc1),
                _channelwise(f"{prefix}bn.", se.bn, size),
                [Member(f"{prefix}fc2.weight", 1)],
            ],
        )


def _mlp(builder: _Builder, prefix: str, m: Any) -> None:
    cls = type(m).__name__
    if cls in {"Mlp", "ConvMlp", "GlobalResponseNormMlp"}:
        size = _out_channels(m.fc1)
        norm = getattr(m, "grn", None) if cls == "GlobalResponseNormMlp" else getattr(m, "norm", None)
        norm_name = "grn." if cls == "GlobalResponseNormMlp" else "norm."
        builder.add(
            f"{prefix}mlp", size,
            [
                _produces(f"{prefix}fc1.", m.fc1),
                _channelwise(f"{prefix}{norm_name}", norm, size),
                [Member(f"{prefix}fc2.weight", 1)],
            ],
        )
    elif cls == "GluMlp":  # fc1 output = [value half, gate half]: permute both halves alike
        size = _out_channels(m.fc1) // 2
        builder.add(
            f"{prefix}mlp", size,
            [
                _produces(f"{prefix}fc1.", m.fc1, repeat=2),
                _channelwise(f"{prefix}norm.", m.norm, size),
                [Member(f"{prefix}fc2.weight", 1)],
            ],
        )
    elif cls == "SwiGLU":
        size = _out_channels(m.fc1_x)
        builder.add(
            f"{prefix}mlp", size,
            [
                _produces(f"{prefix}fc1_g.", m.fc1_g),
                _produces(f"{prefix}fc1_x.", m.fc1_x),
                _channelwise(f"{prefix}norm.", m.norm, size),
                [Member(f"{prefix}fc2.weight", 1)],
            ],
        )


def _attention(builder: _Builder, prefix: str, m: Any) -> None:
    """Heads of timm's ``Attention``: q, k and v rows of a head move together, and proj columns."""
    if getattr(m, "gate", None) is not None or not isinstance(getattr(m, "qkv", None), nn.Linear):
        return
    heads, head_dim = int(m.num_heads), int(m.head_dim)
    if m.qkv.out_features != 3 * heads * head_dim:
        return
    norm = getattr(m, "norm", None)
    norm_part = _channelwise(f"{prefix}norm.", norm, heads * head_dim)
    if norm_part:  # a norm over all heads: its per-feature parameters move in head blocks
        norm_part = [Member(p.key, p.axis, 1, head_dim) for p in norm_part]
    builder.add(
        f"{prefix}heads", heads,
        [
            _produces(f"{prefix}qkv.", m.qkv, repeat=3, block=head_dim),
            norm_part,
            [Member(f"{prefix}proj.weight", 1, 1, head_dim)],
        ],
    )


def _resnet_block(builder: _Builder, prefix: str, m: Any) -> None:
    if m.conv2.groups != 1:
        return  # grouped (ResNeXt) convolutions tie channels to their group
    size = _out_channels(m.conv1)
    builder.add(
        f"{prefix}conv1", size,
        [
            _produces(f"{prefix}conv1.", m.conv1),
            _channelwise(f"{prefix}bn1.", m.bn1, size),
            _channelwise(f"{prefix}aa.", getattr(m, "aa", None), size) if type(m).__name__ == "BasicBlock" else [],
            [Member(f"{prefix}conv2.weight", 1)],
        ],
    )
    if type(m).__name__ == "Bottleneck":
        size = _out_channels(m.conv2)
        builder.add(
            f"{prefix}conv2", size,
            [
                _produces(f"{prefix}conv2.", m.conv2),
                _channelwise(f"{prefix}bn2.", m.bn2, size),
                _channelwise(f"{prefix}aa.", getattr(m, "aa", None), size),
                [Member(f"{prefix}conv3.weight", 1)],
            ],
        )


def _inverted_residual(builder: _Builder, prefix: str, m: Any) -> None:
    """Expansion channels: conv_pw -> bn1 -> depthwise conv_dw -> bn2 -> (aa) -> SE -> conv_pwl."""
    if getattr(m, "conv_s2d", None) is not None or getattr(m.conv_pw, "groups", 1) != 1:
        return
    size = _out_channels(m.conv_pw)
    if not _is_depthwise(m.conv_dw, size):
        return
    builder.add(
        f"{prefix}expansion", size,
        [
            _produces(f"{prefix}conv_pw.", m.conv_pw),
            _channelwise(f"{prefix}bn1.", m.bn1, size),
            _produces(f"{prefix}conv_dw.", m.conv_dw),
            _channelwise(f"{prefix}bn2.", m.bn2, size),
            _channelwise(f"{prefix}aa.", getattr(m, "aa", None), size),
            _se_path(f"{prefix}se.", getattr(m, "se", None), size),
            [Member(f"{prefix}conv_pwl.weight", 1)],
        ],
    )


def _edge_residual(builder: _Builder, prefix: str, m: Any) -> None:
    """EfficientNetV2 fused blocks: conv_exp -> bn1 -> (aa) -> SE -> conv_pwl."""
    if m.conv_exp.groups != 1:
        return
    size = _out_channels(m.conv_exp)
    builder.add(
        f"{prefix}expansion", size,
        [
            _produces(f"{prefix}conv_exp.", m.conv_exp),
            _channelwise(f"{prefix}bn1.", m.bn1, size),
            _channelwise(f"{prefix}aa.", getattr(m, "aa", None), size),
            _se_path(f"{prefix}se.", getattr(m, "se", None), size),
            [Member(f"{prefix}conv_pwl.weight", 1)],
        ],
    )


def _universal_inverted_residual(builder: _Builder, prefix: str, m: Any) -> None:
    """MobileNetV4 UIR: pw_exp (conv+bn) -> optional depthwise dw_mid -> SE -> pw_proj."""
    exp, mid, proj = m.pw_exp, m.dw_mid, m.pw_proj
    if not all(hasattr(x, "conv") for x in (exp, proj)) or exp.conv.groups != 1:
        return
    size = _out_channels(exp.conv)
    parts: list[list[Member] | None] = [
        _produces(f"{prefix}pw_exp.conv.", exp.conv),
        _channelwise(f"{prefix}pw_exp.bn.", getattr(exp, "bn", None), size),
    ]
    if hasattr(mid, "conv"):
        if not _is_depthwise(mid.conv, size):
            return
        parts += [
            _produces(f"{prefix}dw_mid.conv.", mid.conv),
            _channelwise(f"{prefix}dw_mid.bn.", getattr(mid, "bn", None), size),
        ]
    elif list(mid.parameters()):
        return
    parts += [_se_path(f"{prefix}se.", getattr(m, "se", None), size), [Member(f"{prefix}pw_proj.conv.weight", 1)]]
    builder.add(f"{prefix}expansion", size, parts)


def _handlers() -> dict[type, Callable[[_Builder, str, Any], None]]:
    """timm classes with a known hidden-unit structure (exact classes: names repeat across timm)."""
    import timm.layers as tl
    from timm.models import _efficientnet_blocks as eb
    from timm.models import resnet

    return {
        tl.Mlp: _mlp,
        tl.ConvMlp: _mlp,
        tl.GluMlp: _mlp,
        tl.SwiGLU: _mlp,
        tl.GlobalResponseNormMlp: _mlp,
        tl.Attention: _attention,
        resnet.BasicBlock: _resnet_block,
        resnet.Bottleneck: _resnet_block,
        eb.InvertedResidual: _inverted_residual,
        eb.EdgeResidual: _edge_residual,
        eb.UniversalInvertedResidual: _universal_inverted_residual,
        eb.SqueezeExcite: _se_internal,
        tl.SEModule: _se_internal,
    }


def find_permutation_groups(model: nn.Module) -> list[PermutationGroup]:
    """All function-preserving hidden-unit permutation groups of a timm model (see module doc)."""
    handlers = _handlers()
    builder = _Builder()
    for name, module in model.named_modules():
        handler = handlers.get(type(module))
        if handler is not None:
            handler(builder, f"{name}." if name else "", module)
    return builder.groups


def random_permutations(
    groups: list[PermutationGroup], generator: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """One random permutation per group (``name -> perm``)."""
    return {g.name: torch.randperm(g.size, generator=generator) for g in groups}


def _permute_axis(tensor: torch.Tensor, member: Member, perm: torch.Tensor) -> torch.Tensor:
    axis = member.axis % tensor.ndim
    shape = tensor.shape
    size = perm.numel()
    if shape[axis] != member.repeat * size * member.block:
        raise ValueError(
            f"{member.key}: axis {axis} has {shape[axis]} entries, expected {member.repeat}x{size}x{member.block}"
        )
    view = tensor.reshape(*shape[:axis], member.repeat, size, member.block, *shape[axis + 1 :])
    return view.index_select(axis + 1, perm.to(tensor.device)).reshape(shape)


def permute_state_dict(
    state_dict: dict[str, torch.Tensor],
    groups: list[PermutationGroup],
    perms: dict[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """A copy of ``state_dict`` with every group's hidden units reordered by ``perms[group.name]``."""
    out = dict(state_dict)
    for group in groups:
        perm = perms.get(group.name)
        if perm is None:
            continue
        for member in group.members:
            if member.key not in out:
                raise KeyError(f"permutation group {group.name} names {member.key}, absent from the state dict")
            out[member.key] = _permute_axis(out[member.key], member, perm)
    return out
