"""Control initializations a generated model has to beat (method notes §4).

A weight generator that only reproduces its training checkpoints, or that is no better than
perturbing the prompt, adds no knowledge (Zeng et al., arXiv 2506.07998). These controls are built
from the same ingredients the generator had, so ``compare`` can tell:

- :func:`matched_noise` — *prompt + noise*: Gaussian noise added to each of the prompt's tensors,
  scaled so that every tensor moves exactly as far as the generated candidate moved it;
- :func:`nearest_member` — the zoo member of the prompt's architecture closest to it in weight
  space (and, through ``geosane generate --bandwidth 0``, the autoencoder's reconstruction of it);
- :func:`select_weights` — *weight selection* (Xu et al., ICLR 2024, "Initializing Models with
  Larger Ones"): a smaller model inherits the layers and the leading channels of a larger one;
- :func:`prune_to` — a larger model pruned to the smaller one: hidden units ranked by the L1
  norm of the filters producing them (function-preserving reordering through
  :mod:`geosane.autoencoder.permutation`), then the leading ones kept. Channels tied to a residual
  stream cannot be reordered without changing the function, so they are kept leading, as in
  weight selection; the two controls differ in the hidden units.

Every function raises :class:`NotApplicable` (with the reason) when its control cannot be built,
so a benchmark reports "not applicable: why" instead of skipping it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from geosane.arch.spec import ArchSpec, same_architecture
from geosane.downstream.merges import is_running_stat
from geosane.errors import GeosaneError
from geosane.zoo import Zoo, ZooEntry

if TYPE_CHECKING:  # imported where used, as in the functions below
    from geosane.autoencoder.permutation import PermutationGroup

__all__ = [
    "NotApplicable",
    "WeightSource",
    "head_keys",
    "larger_member",
    "matched_noise",
    "nearest_member",
    "prune_to",
    "select_weights",
    "weight_distance",
]

StateDict = dict[str, torch.Tensor]


class NotApplicable(GeosaneError):
    """A control that cannot be built for this prompt or zoo; the message says why."""


@dataclass
class WeightSource:
    """A zoo member chosen for a control, and why (distance, parameter count)."""

    entry: ZooEntry
    state_dict: StateDict
    note: str


def _comparable(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> list[str]:
    """Floating tensors present in both with one shape (BatchNorm statistics excluded)."""
    return [
        k
        for k, v in a.items()
        if k in b and v.is_floating_point() and v.shape == b[k].shape and not is_running_stat(k)
    ]


def weight_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Relative L2 distance ``||a - b|| / ||b||`` over the tensors both have with one shape."""
    keys = _comparable(a, b)
    if not keys:
        return float("nan")
    diff = sum(float((a[k].double() - b[k].double()).pow(2).sum()) for k in keys)
    norm = sum(float(b[k].double().pow(2).sum()) for k in keys)
    return (diff / max(norm, 1e-30)) ** 0.5


def matched_noise(
    prompt: Mapping[str, torch.Tensor], generated: Mapping[str, torch.Tensor], seed: int = 0
) -> tuple[StateDict, dict[str, float]]:
    """``prompt`` plus per-tensor Gaussian noise with ``||noise_t|| = ||generated_t - prompt_t||``.

    Every floating tensor the two share with one shape is perturbed; BatchNorm statistics and
    tensors of other shapes (a head for other classes) stay the prompt's. Returns the weights and
    ``{"distance": relative L2 distance to the prompt, "tensors": how many were perturbed}``.
    """
    generator = torch.Generator().manual_seed(seed)
    out = {k: v.clone() for k, v in prompt.items()}
    keys = _comparable(prompt, generated)
    if not keys:
        raise NotApplicable("the generated weights share no tensor shape with the prompt")
    for key in keys:
        base = prompt[key]
        target = float((generated[key].double() - base.double()).norm())
        noise = torch.randn(base.shape, generator=generator, dtype=torch.float64)
        scale = target / max(float(noise.norm()), 1e-30)
        out[key] = (base.double() + noise * scale).to(base.dtype)
    return out, {"distance": weight_distance(out, prompt), "tensors": float(len(keys))}


def _members_of(zoo: Zoo, arch: ArchSpec, exclude: Iterable[str] = ()) -> list[ZooEntry]:
    skip = set(exclude)
    return [
        e
        for e in zoo
        if e.arch_spec is not None and same_architecture(e.arch_spec, arch) and e.id not in skip
    ]


def nearest_member(
    zoo: Zoo, arch: ArchSpec, prompt: Mapping[str, torch.Tensor], exclude: Iterable[str] = ()
) -> WeightSource:
    """The zoo member of ``arch`` nearest to ``prompt`` (relative L2 over shared tensors).

    Only members whose every tensor outside the task head has the prompt's shape qualify (same
    bands: a 1-band member of the architecture is another model for an RGB prompt). A member
    holding the prompt's own weights (distance 0: the prompt is itself in the zoo) is not a
    control of it and is passed over.
    """
    members = _members_of(zoo, arch, exclude)
    if not members:
        raise NotApplicable(f"the zoo has no {arch.library}:{arch.name} {arch.kwargs} member")
    head = head_keys(arch)
    scored = []
    itself = []
    for entry in members:
        weights = zoo.load_state_dict(entry.id)
        if any(
            k not in head and (k not in weights or weights[k].shape != v.shape) for k, v in prompt.items()
        ):
            continue
        distance = weight_distance(prompt, weights)
        if distance == 0.0:
            itself.append(entry.id)  # the prompt itself
            continue
        scored.append((distance, entry.id, entry, weights))
    if not scored and itself:
        raise NotApplicable(
            f"the zoo's only {arch.name} member with the prompt's tensor shapes is the prompt ({itself[0]})"
        )
    if not scored:
        raise NotApplicable(
            f"no {arch.name} zoo member has the prompt's tensor shapes (members {[e.id for e in members]} "
            "differ in bands or layers)"
        )
    distance, _, entry, weights = min(scored, key=lambda s: (s[0], s[1]))
    return WeightSource(entry, weights, f"{entry.id}: relative L2 distance {distance:.3f} to the prompt")


def fits_architecture(arch: ArchSpec, weights: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``weights`` hold every tensor of ``arch`` outside its head, in the architecture's
    shape (a 4-band member of a 6-band prompt's U-Net does not: its stem differs)."""
    shapes, head = _template(arch)
    return all(k in head or (k in weights and weights[k].shape == shape) for k, shape in shapes.items())


def head_keys(arch: ArchSpec) -> set[str]:
    """State-dict keys of the architecture's task head (they are re-initialised for a task)."""
    return _template(arch)[1]


def _template(arch: ArchSpec) -> tuple[dict[str, torch.Size], set[str]]:
    """Shapes of every tensor of ``arch`` and its head's keys (one meta-device build)."""
    from geosane.arch.libraries import arch_library
    from geosane.arch.meta import empty_architecture
    from geosane.tasks.models import _head_names

    model = empty_architecture(arch)
    shapes = {k: v.shape for k, v in model.state_dict().items()}
    return shapes, _head_names(model, arch_library(arch.library).head_prefixes)


def _covers(source: torch.Tensor | None, shape: torch.Size) -> bool:
    """Whether leading selection from ``source`` can give a tensor of ``shape``."""
    return (
        source is not None
        and source.ndim == len(shape)
        and all(s >= t for s, t in zip(source.shape, shape, strict=True))
    )


def _uncovered(
    template: Mapping[str, torch.Size], larger: Mapping[str, torch.Tensor], head: set[str]
) -> list[str]:
    """Keys of ``template`` (head excluded) that ``larger`` cannot supply by leading selection."""
    return [
        key
        for key, shape in template.items()
        if key not in head and not key.endswith("num_batches_tracked") and not _covers(larger.get(key), shape)
    ]


def select_weights(arch: ArchSpec, larger: Mapping[str, torch.Tensor]) -> StateDict:
    """Weight selection: every tensor of ``arch`` is the leading block of the larger model's.

    Layers are matched by name (timm names blocks by position, so a shallower model takes the
    first blocks of each stage), channels by position (the first ``c`` of each axis: one
    consistent choice along every axis, as the residual connections require). Head tensors of
    another shape are left out (the task head is re-initialised).
    """
    template, head = _template(arch)
    bad = _uncovered(template, larger, head)
    if bad:
        raise NotApplicable(
            f"the larger model cannot supply {len(bad)} tensor(s) of {arch.name} (e.g. {', '.join(bad[:3])})"
        )
    out: StateDict = {}
    for key, shape in template.items():
        source = larger.get(key)
        if not _covers(source, shape):
            continue  # a head of another shape, or a counter the model rebuilds
        assert source is not None
        out[key] = source[tuple(slice(0, t) for t in shape)].clone()
    return out


def larger_member(zoo: Zoo, arch: ArchSpec, exclude: Iterable[str] = ()) -> WeightSource:
    """The smallest zoo member that can supply every tensor of ``arch`` and is not ``arch`` itself.

    Same library and model name (layer names must match); ties: the best recorded accuracy.
    """
    template, head = _template(arch)
    skip = set(exclude)
    candidates = []
    for entry in zoo:
        spec = entry.arch_spec
        if spec is None or entry.id in skip or spec.library != arch.library or spec.name != arch.name:
            continue
        if same_architecture(spec, arch):
            continue
        weights = zoo.load_state_dict(entry.id)
        if _uncovered(template, weights, head):
            continue
        accuracy = entry.metadata.get("select_accuracy") or 0.0
        candidates.append((entry.num_params, -float(accuracy), entry.id, entry, weights))
    if not candidates:
        raise NotApplicable(f"the zoo has no larger {arch.library}:{arch.name} to inherit {arch.kwargs} from")
    num_params, _, _, entry, weights = min(candidates, key=lambda c: c[:3])
    return WeightSource(entry, weights, f"{entry.id} ({num_params:,} parameters)")


def _unit_order(weights: Mapping[str, torch.Tensor], group: PermutationGroup) -> torch.Tensor:
    """Units of a permutation group, most important first (L1 norm of the producing filters)."""
    member = group.members[0]
    tensor = weights[member.key].float()
    axis = member.axis % tensor.ndim
    view = tensor.reshape(
        *tensor.shape[:axis], member.repeat, group.size, member.block, *tensor.shape[axis + 1 :]
    )
    dims = [d for d in range(view.ndim) if d != axis + 1]
    importance = view.abs().sum(dim=dims)
    return torch.argsort(importance, descending=True, stable=True)


def prune_to(arch: ArchSpec, larger_arch: ArchSpec, larger: Mapping[str, torch.Tensor]) -> StateDict:
    """Structured magnitude pruning of the larger model down to ``arch`` (see the module doc)."""
    from geosane.arch.meta import empty_architecture
    from geosane.autoencoder.permutation import find_permutation_groups, permute_state_dict

    groups = find_permutation_groups(empty_architecture(larger_arch))
    if not groups:
        raise NotApplicable(
            f"{larger_arch.name} has no hidden units geosane can reorder, so pruning = weight selection"
        )
    weights = dict(larger)
    perms = {g.name: _unit_order(weights, g) for g in groups}
    return select_weights(arch, permute_state_dict(weights, groups, perms))
