"""Permutation alignment of a zoo model to the prompt before it becomes a KDE anchor.

Two networks trained from different initialisations compute similar functions with their hidden
units in a different order, so mixing their tokens (a KDE anchor per token) mixes unrelated
units. Weight matching (Ainsworth et al., "Git Re-Basin", ICLR 2023) reorders the other model's
units to the prompt's: for one permutation group at a time it solves the linear assignment that
maximises ``sum <prompt unit i, other unit j>`` over every tensor axis of the group, holding the
other groups fixed, and repeats until no group changes. Reordering is function-preserving, so the
aligned model is the same network.

Groups: the hidden units of :mod:`geosane.autoencoder.permutation` (MLP, attention-free blocks:
``repeat == block == 1``), plus, for timm ResNets, the residual streams of the stem and of every
stage (:func:`resnet_stream_groups`), without which a block's units can only be matched through
unaligned inputs.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from geosane.autoencoder.permutation import (
    Member,
    PermutationGroup,
    find_permutation_groups,
    permute_state_dict,
)

__all__ = ["alignment_groups", "resnet_stream_groups", "weight_matching"]


def _channelwise(prefix: str, module: nn.Module) -> list[Member]:
    keys = [f"{prefix}{name}" for name, _ in module.named_parameters()]
    keys += [f"{prefix}{name}" for name, b in module.named_buffers() if b.ndim == 1]
    return [Member(k, 0) for k in keys]


def _conv_and_norm(
    module: nn.Module, prefix: str
) -> tuple[str, nn.Conv2d, str, nn.modules.batchnorm._BatchNorm] | None:
    """The last convolution of a (downsample / stem) sequence and the norm after it."""
    conv = norm = None
    conv_name = norm_name = ""
    for name, child in module.named_modules():
        if isinstance(child, nn.Conv2d):
            conv, conv_name, norm = child, name, None
        elif isinstance(child, nn.modules.batchnorm._BatchNorm) and conv is not None:
            norm, norm_name = child, name
    if conv is None or norm is None:
        return None
    return f"{prefix}{conv_name}.".replace("..", "."), conv, f"{prefix}{norm_name}.".replace("..", "."), norm


def resnet_stream_groups(model: nn.Module) -> list[PermutationGroup]:
    """The residual streams of a timm ResNet (plain blocks, no squeeze-excitation); else none."""
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    if not isinstance(model, ResNet) or not isinstance(model.conv1, nn.Conv2d):
        return []
    blocks = [(f"layer{i}.{j}.", b) for i in range(1, 5) for j, b in enumerate(getattr(model, f"layer{i}"))]
    if any(not isinstance(b, BasicBlock | Bottleneck) or getattr(b, "se", None) is not None for _, b in blocks):
        return []
    groups: list[PermutationGroup] = []
    size = model.conv1.out_channels
    members = [Member("conv1.weight", 0), *_channelwise("bn1.", model.bn1)]
    for prefix, block in blocks:
        members.append(Member(f"{prefix}conv1.weight", 1))
        if block.downsample is not None:
            found = _conv_and_norm(block.downsample, f"{prefix}downsample.")
            if found is None:
                return []
            conv_prefix, conv, norm_prefix, norm = found
            members.append(Member(f"{conv_prefix}weight", 1))
            groups.append(PermutationGroup(f"stream{len(groups)}", size, tuple(members)))
            size = conv.out_channels
            members = [Member(f"{conv_prefix}weight", 0), *_channelwise(norm_prefix, norm)]
        last = "conv3" if isinstance(block, Bottleneck) else "conv2"
        bn = block.bn3 if isinstance(block, Bottleneck) else block.bn2
        members += [Member(f"{prefix}{last}.weight", 0), *_channelwise(f"{prefix}{'bn3' if last == 'conv3' else 'bn2'}.", bn)]
    if isinstance(model.fc, nn.Linear):
        members.append(Member("fc.weight", 1))
    groups.append(PermutationGroup(f"stream{len(groups)}", size, tuple(members)))
    return groups


def alignment_groups(model: nn.Module) -> list[PermutationGroup]:
    """Every group weight matching can align in ``model`` (hidden units, then residual streams)."""
    hidden = [
        g for g in find_permutation_groups(model) if all(m.repeat == 1 and m.block == 1 for m in g.members)
    ]
    return hidden + resnet_stream_groups(model)


def _rows(tensor: torch.Tensor, axis: int) -> torch.Tensor:
    return tensor.movedim(axis, 0).reshape(tensor.shape[axis], -1).double()


def weight_matching(
    reference: Mapping[str, torch.Tensor],
    other: Mapping[str, torch.Tensor],
    groups: list[PermutationGroup],
    max_rounds: int = 30,
    seed: int = 0,
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Permutations (``group name -> perm``) that align ``other`` to ``reference``.

    Tensors whose shapes differ between the two (a head for other classes) do not vote. Returns the
    permutations and ``{"rounds", "similarity_before", "similarity_after"}`` (cosine similarity of
    all voting tensors, concatenated).
    """
    perms = {g.name: torch.arange(g.size) for g in groups}
    voting = {
        g.name: [m for m in g.members if m.key in reference and m.key in other and reference[m.key].shape == other[m.key].shape]
        for g in groups
    }
    keys = sorted({m.key for members in voting.values() for m in members})

    def similarity(state: Mapping[str, torch.Tensor]) -> float:
        a = torch.cat([reference[k].double().flatten() for k in keys])
        b = torch.cat([state[k].double().flatten() for k in keys])
        return float(torch.nn.functional.cosine_similarity(a, b, dim=0))

    before = similarity(other)
    rng = np.random.default_rng(seed)
    rounds = 0
    for rounds in range(1, max_rounds + 1):  # noqa: B007 (reported)
        changed = False
        for index in rng.permutation(len(groups)):
            group = groups[index]
            current = permute_state_dict(dict(other), groups, perms)
            cost = torch.zeros(group.size, group.size, dtype=torch.float64)
            for m in voting[group.name]:
                cost += _rows(reference[m.key], m.axis) @ _rows(current[m.key], m.axis).T
            _, sigma = linear_sum_assignment(cost.numpy(), maximize=True)
            if not np.array_equal(sigma, np.arange(group.size)):
                perms[group.name] = perms[group.name][torch.as_tensor(sigma)]
                changed = True
        if not changed:
            break
    aligned = permute_state_dict(dict(other), groups, perms)
    return perms, {"rounds": float(rounds), "similarity_before": before, "similarity_after": similarity(aligned)}
