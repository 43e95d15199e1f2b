"""Fusion of diffusion feature streams: GW, LW and MoE fusers over per-stream bottleneck projectors.

A *stream* is one (timestep, group) feature map; a group is either all hooked layers of one spatial
scale concatenated (``group: scale``, the method's layout) or a single layer (``group: layer``).
Every stream first goes through its own :class:`BottleneckProjector` to ``width`` channels. A fuser
maps the projected streams to one map per spatial scale (finest first), which a head consumes.

- :class:`GWFuser`: one learnable logit per stream, a single softmax over all of them, weighted sum per scale.
- :class:`LWFuser`: per scale, a 1x1 conv on the mean of that scale's streams gives one logit per
  stream and pixel; softmax over streams; per-pixel weighted sum.
- :class:`MoEFuser`: per scale and timestep, the scale's projected groups are concatenated and
  routed image-wise to ``top_k`` of ``num_experts`` experts by a gate (3x3 conv -> global pool ->
  logits / learnable temperature); a dense soft mixture for the first ``warmup_steps`` optimizer
  steps; outputs averaged over timesteps. Its load-balancing loss is returned by :meth:`aux_loss`
  and must be added to the training loss (:class:`geosane.difuser.DifuserModel` does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from torch import nn

from geosane.difuser.backbone import LayerInfo
from geosane.difuser.config import FuserConfig
from geosane.errors import ConfigError

__all__ = [
    "BottleneckProjector",
    "Fuser",
    "GWFuser",
    "LWFuser",
    "MoEFuser",
    "StreamGroup",
    "StreamLayout",
    "build_fuser",
    "feature_key",
]


def feature_key(timestep: int, layer: str) -> str:
    """Key of one cached feature map in a feature dict: ``t{timestep}/{layer}``."""
    return f"t{timestep}/{layer}"


@dataclass(frozen=True)
class StreamGroup:
    """Layers fused as one stream (per timestep): name, layers, total channels, map size, scale index."""

    name: str
    layers: tuple[str, ...]
    channels: int
    size: tuple[int, int]
    scale: int


@dataclass(frozen=True)
class StreamLayout:
    """Timesteps x groups, and the spatial scales (finest first) the groups belong to."""

    timesteps: tuple[int, ...]
    groups: tuple[StreamGroup, ...]
    sizes: tuple[tuple[int, int], ...]

    @classmethod
    def from_layers(
        cls, layers: Sequence[LayerInfo], timesteps: Sequence[int], group: str = "scale"
    ) -> StreamLayout:
        sizes = sorted({info.size for info in layers}, key=lambda s: (-s[0] * s[1], s))
        scale_of = {size: i for i, size in enumerate(sizes)}
        if group == "scale":
            groups = []
            for size in sizes:
                members = [info for info in layers if info.size == size]
                groups.append(
                    StreamGroup(
                        f"{size[0]}x{size[1]}",
                        tuple(m.name for m in members),
                        sum(m.channels for m in members),
                        size,
                        scale_of[size],
                    )
                )
        elif group == "layer":
            ordered = sorted(layers, key=lambda info: scale_of[info.size])
            groups = [
                StreamGroup(info.name, (info.name,), info.channels, info.size, scale_of[info.size])
                for info in ordered
            ]
        else:
            raise ConfigError(f"unknown fuser.group '{group}' (choose scale or layer)")
        return cls(tuple(int(t) for t in timesteps), tuple(groups), tuple(sizes))

    @property
    def num_scales(self) -> int:
        return len(self.sizes)

    def streams(self) -> list[tuple[int, StreamGroup]]:
        """All (timestep, group) streams, timestep-major."""
        return [(t, g) for t in self.timesteps for g in self.groups]

    def assemble(self, features: Mapping[str, torch.Tensor]) -> list[torch.Tensor]:
        """Stream tensors (timestep-major) from a feature dict keyed by :func:`feature_key`."""
        out = []
        for t, group in self.streams():
            maps = [features[feature_key(t, layer)] for layer in group.layers]
            out.append(maps[0] if len(maps) == 1 else torch.cat(maps, dim=1))
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "timesteps": list(self.timesteps),
            "groups": [
                {
                    "name": g.name,
                    "layers": list(g.layers),
                    "channels": g.channels,
                    "size": list(g.size),
                    "scale": g.scale,
                }
                for g in self.groups
            ],
            "sizes": [list(s) for s in self.sizes],
        }


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = max(g for g in range(1, 33) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class BottleneckProjector(nn.Module):
    """1x1 -> 3x3 -> 1x1 convs with GroupNorm (bottleneck width/4) plus a projected shortcut."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        mid = max(width // 4, 1)
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, mid, 1, bias=False),
            _group_norm(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, padding=1, bias=False),
            _group_norm(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, width, 1, bias=False),
            _group_norm(width),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, width, 1, bias=False), _group_norm(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


class Fuser(nn.Module):
    """Base: per-stream projectors; subclasses fuse the projected streams into one map per scale."""

    def __init__(self, layout: StreamLayout, width: int, project_streams: bool = True) -> None:
        super().__init__()
        self.layout = layout
        self.width = width
        self.project_streams = project_streams
        self.projectors = nn.ModuleList(
            BottleneckProjector(g.channels, width) for _, g in (layout.streams() if project_streams else [])
        )
        self.reset_statistics()

    def project(self, streams: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Every stream through its projector (or unchanged when the fuser projects inside its experts)."""
        expected = len(self.layout.streams())
        if len(streams) != expected:
            raise ValueError(f"expected {expected} streams, got {len(streams)}")
        if not self.project_streams:
            return list(streams)
        return [proj(x) for proj, x in zip(self.projectors, streams, strict=True)]

    def aux_loss(self) -> torch.Tensor:
        """Extra training loss of the last forward pass (zero except for MoE)."""
        return torch.zeros(())

    def reset_statistics(self) -> None:
        """Forget fusion-weight statistics gathered in eval passes."""

    def summary(self) -> dict[str, Any]:
        """Learned fusion weights / gate statistics as JSON-ready data (with a ``heatmap`` matrix)."""
        raise NotImplementedError

    def _stream_labels(self) -> tuple[list[str], list[str]]:
        return [f"t={t}" for t in self.layout.timesteps], [g.name for g in self.layout.groups]


class GWFuser(Fuser):
    """Global weighting: one softmax over all timestep x group logits."""

    def __init__(self, layout: StreamLayout, width: int) -> None:
        super().__init__(layout, width)
        self.logits = nn.Parameter(torch.zeros(len(layout.timesteps), len(layout.groups)))

    def weights(self) -> torch.Tensor:
        """``[timesteps, groups]`` fusion weights (they sum to 1 over all entries)."""
        return torch.softmax(self.logits.flatten(), dim=0).view_as(self.logits)

    def forward(self, streams: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        projected = self.project(streams)
        w = self.weights().flatten()
        outs: list[torch.Tensor | None] = [None] * self.layout.num_scales
        for k, ((_, group), x) in enumerate(zip(self.layout.streams(), projected, strict=True)):
            term = w[k] * x
            s = group.scale
            prev = outs[s]
            outs[s] = term if prev is None else prev + term
        return [o for o in outs if o is not None]

    def summary(self) -> dict[str, Any]:
        rows, cols = self._stream_labels()
        return {
            "fuser": "gw",
            "description": "softmax weight of each (timestep, group) stream; all entries sum to 1",
            "rows": rows,
            "columns": cols,
            "heatmap": self.weights().detach().cpu().tolist(),
        }


class LWFuser(Fuser):
    """Localized weighting: per scale, per-pixel softmax over that scale's streams."""

    def __init__(self, layout: StreamLayout, width: int) -> None:
        self._scale_streams = [
            [k for k, (_, g) in enumerate(layout.streams()) if g.scale == s] for s in range(layout.num_scales)
        ]
        super().__init__(layout, width)
        self.mixers = nn.ModuleList(nn.Conv2d(width, len(idx), 1) for idx in self._scale_streams)

    def reset_statistics(self) -> None:
        self._weight_sum = torch.zeros(
            len(self.layout.timesteps) * len(self.layout.groups), dtype=torch.float64
        )
        self._weight_count = 0

    def forward(self, streams: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        projected = self.project(streams)
        outs = []
        self.last_weights: list[torch.Tensor] = []
        for mixer, idx in zip(self.mixers, self._scale_streams, strict=True):
            stack = torch.stack([projected[k] for k in idx], dim=1)  # [B, K, W, h, w]
            weights = torch.softmax(mixer(stack.mean(dim=1)), dim=1)  # [B, K, h, w]
            self.last_weights.append(weights)
            outs.append((weights.unsqueeze(2) * stack).sum(dim=1))
            if not self.training:
                self._weight_sum[idx] += weights.detach().mean(dim=(2, 3)).sum(dim=0).double().cpu()
        if not self.training:
            self._weight_count += int(projected[0].shape[0])
        return outs

    def summary(self) -> dict[str, Any]:
        rows, cols = self._stream_labels()
        mean = self._weight_sum / max(self._weight_count, 1)
        return {
            "fuser": "lw",
            "description": "per-pixel softmax weights averaged over pixels and evaluated images; "
            "entries of one spatial scale sum to 1",
            "images": self._weight_count,
            "rows": rows,
            "columns": cols,
            "heatmap": mean.view(len(rows), len(cols)).tolist(),
        }


class _Expert(nn.Module):
    """A pointwise MLP (1x1 conv -> GroupNorm -> GELU -> 1x1 conv), the usual FFN-style expert."""

    def __init__(self, in_channels: int, width: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 1, bias=False),
            _group_norm(width),
            nn.GELU(),
            nn.Conv2d(width, width, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


MoEVariant = Literal["reference", "projected"]
BalanceLoss = Literal["auto", "usage_kl", "switch"]


class MoEFuser(Fuser):
    """Image-level top-k mixture of experts per scale, dense during warm-up, outputs averaged over timesteps.

    Two variants (``fuser.moe_variant``):

    - ``reference`` (default), shaped like SatDiFuser's ``MOEWeightedPerScale``: no per-stream
      projectors; per scale, the raw hooked features of one timestep (the scale's layers
      concatenated) go to a gate (3x3 conv -> global pool -> logits / temperature) and to
      ``num_experts`` experts that are each a bottleneck projector (1x1 -> 3x3 -> 1x1 convs with
      GroupNorm, projected shortcut) to ``width`` channels; gate and experts are shared by the
      timesteps. Balance loss ``usage_kl``: ``sum_e u_e log(E u_e)``, the KL divergence of the
      mean gate probabilities ``u`` from uniform.
    - ``projected`` (geosane's first version): every stream through its own projector first, then
      pointwise-MLP experts on the scale's projected groups; balance loss ``switch``
      (``E * sum_e f_e P_e``).

    ``balance_loss`` overrides the variant's own (``auto``). ``optimizer_steps`` is a persistent
    buffer (saved in state dicts and checkpoints) counting optimizer steps only: call :meth:`attach`
    on the optimizer (or :meth:`count_optimizer_step` after each step). Evaluation passes never
    change it.
    """

    optimizer_steps: torch.Tensor  # the buffer registered in __init__

    def __init__(
        self,
        layout: StreamLayout,
        width: int,
        num_experts: int = 8,
        top_k: int = 2,
        warmup_steps: int = 200,
        balance_weight: float = 0.01,
        temperature: float = 1.0,
        variant: MoEVariant = "reference",
        balance_loss: BalanceLoss = "auto",
    ) -> None:
        if top_k > num_experts:
            raise ConfigError(f"fuser.top_k ({top_k}) is larger than fuser.num_experts ({num_experts})")
        if top_k <= 0 or temperature <= 0:
            raise ConfigError("fuser.top_k and fuser.temperature must be positive")
        if variant not in ("reference", "projected"):
            raise ConfigError(f"fuser.moe_variant must be reference or projected, got {variant!r}")
        if balance_loss not in ("auto", "usage_kl", "switch"):
            raise ConfigError(f"fuser.balance_loss must be auto, usage_kl or switch, got {balance_loss!r}")
        self.num_experts = num_experts
        self.top_k = top_k
        self.warmup_steps = warmup_steps
        self.balance_weight = balance_weight
        self.variant = variant
        self.balance_loss = (
            ("usage_kl" if variant == "reference" else "switch") if balance_loss == "auto" else balance_loss
        )
        super().__init__(layout, width, project_streams=variant == "projected")
        scales = range(layout.num_scales)
        if variant == "projected":
            in_channels = [sum(1 for g in layout.groups if g.scale == s) * width for s in scales]
        else:  # the raw hooked channels of the scale
            in_channels = [sum(g.channels for g in layout.groups if g.scale == s) for s in scales]
        self.gates = nn.ModuleList(nn.Conv2d(c, num_experts, 3, padding=1) for c in in_channels)
        self.log_temperature = nn.Parameter(torch.full((layout.num_scales,), math.log(temperature)))
        make_expert: Any = _Expert if variant == "projected" else BottleneckProjector
        self.experts = nn.ModuleList(
            nn.ModuleList(make_expert(c, width) for _ in range(num_experts)) for c in in_channels
        )
        self.register_buffer("optimizer_steps", torch.zeros((), dtype=torch.long), persistent=True)
        self._aux = torch.zeros(())

    # ------------------------------------------------------------------ warm-up counter
    @property
    def dense(self) -> bool:
        """True while still in the dense warm-up (fewer than ``warmup_steps`` optimizer steps)."""
        return int(self.optimizer_steps) < self.warmup_steps

    def count_optimizer_step(self) -> None:
        self.optimizer_steps += 1

    def attach(self, optimizer: torch.optim.Optimizer) -> Any:
        """Count every ``optimizer.step()``; returns the hook handle."""
        return optimizer.register_step_post_hook(lambda *_: self.count_optimizer_step())

    # ------------------------------------------------------------------ forward
    def reset_statistics(self) -> None:
        shape = (len(self.layout.timesteps), len(self.layout.sizes), self.num_experts)
        self._usage = torch.zeros(shape, dtype=torch.float64)
        self._prob_sum = torch.zeros(shape, dtype=torch.float64)
        self._images = 0

    def route(self, scale: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Gate of ``scale`` on ``x``: (probs ``[B, E]``, combine weights ``[B, E]`` summing to 1, top-k ids)."""
        logits = self.gates[scale](x).mean(dim=(2, 3)) / self.log_temperature[scale].exp()
        probs = torch.softmax(logits, dim=1)
        top_val, top_idx = probs.topk(self.top_k, dim=1)
        if self.dense:
            combine = probs
        else:
            combine = torch.zeros_like(probs).scatter(1, top_idx, top_val / top_val.sum(dim=1, keepdim=True))
        return probs, combine, top_idx

    def _balance_loss(self, probs: torch.Tensor, top_idx: torch.Tensor) -> torch.Tensor:
        """``usage_kl``: KL(mean gate probs || uniform) = sum_e u_e log(E u_e), zero when balanced
        (SatDiFuser's term with the sign that balances: the reference negates it, and then discards it).
        ``switch``: E * sum_e (fraction routed to e) * (mean gate prob of e)."""
        if self.balance_loss == "usage_kl":
            usage = probs.mean(dim=0)
            return (usage * torch.log(usage * self.num_experts + 1e-8)).sum()
        counts = F.one_hot(top_idx, self.num_experts).sum(dim=(0, 1)).to(probs.dtype)
        fraction = counts / counts.sum()
        return self.num_experts * (fraction * probs.mean(dim=0)).sum()

    def _mix(self, scale: int, x: torch.Tensor, combine: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(x.shape[0], self.width, *x.shape[2:])
        for e, expert in enumerate(cast(nn.ModuleList, self.experts[scale])):
            rows = (combine[:, e] > 0).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            out = out.index_add(0, rows, combine[rows, e].view(-1, 1, 1, 1) * expert(x[rows]))
        return out

    def forward(self, streams: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        projected = self.project(streams)
        per_stream = self.layout.streams()
        num_t = len(self.layout.timesteps)
        outs: list[torch.Tensor] = []
        losses = []
        for s in range(self.layout.num_scales):
            acc = None
            for ti, t in enumerate(self.layout.timesteps):
                members = [projected[k] for k, (tt, g) in enumerate(per_stream) if tt == t and g.scale == s]
                x = members[0] if len(members) == 1 else torch.cat(members, dim=1)
                probs, combine, top_idx = self.route(s, x)
                losses.append(self._balance_loss(probs, top_idx))
                y = self._mix(s, x, combine)
                acc = y if acc is None else acc + y
                if not self.training:
                    self._usage[ti, s] += combine.detach().sum(dim=0).double().cpu()
                    self._prob_sum[ti, s] += probs.detach().sum(dim=0).double().cpu()
            assert acc is not None
            outs.append(acc / num_t)
        if not self.training:
            self._images += int(projected[0].shape[0])
        self._aux = self.balance_weight * torch.stack(losses).mean()
        return outs

    def aux_loss(self) -> torch.Tensor:
        return self._aux

    def summary(self) -> dict[str, Any]:
        n = max(self._images, 1)
        usage = (self._usage / n).tolist()
        probs = (self._prob_sum / n).tolist()
        scales = [f"{h}x{w}" for h, w in self.layout.sizes]
        rows = [f"t={t} {sc}" for t in self.layout.timesteps for sc in scales]
        return {
            "fuser": "moe",
            "variant": self.variant,
            "balance_loss": self.balance_loss,
            "description": "mean combine weight of each expert per (timestep, scale) over evaluated images "
            "(rows sum to 1); gate_probs are the mean softmax gate probabilities",
            "images": self._images,
            "optimizer_steps": int(self.optimizer_steps),
            "dense_warmup": self.dense,
            "top_k": self.top_k,
            "temperature": self.log_temperature.detach().exp().tolist(),
            "rows": rows,
            "columns": [f"expert {e}" for e in range(self.num_experts)],
            "heatmap": [row for per_t in usage for row in per_t],
            "gate_probs": [row for per_t in probs for row in per_t],
        }


def build_fuser(config: FuserConfig, layout: StreamLayout) -> Fuser:
    """The fuser named by ``config.name`` over ``layout``."""
    if config.name == "gw":
        return GWFuser(layout, config.width)
    if config.name == "lw":
        return LWFuser(layout, config.width)
    return MoEFuser(
        layout,
        config.width,
        num_experts=config.num_experts,
        top_k=config.top_k,
        warmup_steps=config.warmup_steps,
        balance_weight=config.balance_weight,
        temperature=config.temperature,
        variant=config.moe_variant,
        balance_loss=config.balance_loss,
    )
