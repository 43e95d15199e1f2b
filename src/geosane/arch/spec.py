"""Architecture records and named tensors: what every stage passes around to describe a model.

An :class:`ArchSpec` says how to rebuild a model with random weights (through its library,
:mod:`geosane.arch.libraries`); a :class:`LoadedModel` pairs it with a state dict and what is known
about the weights. Resolving sources into them is the zoo's job (:func:`geosane.zoo.resolve`);
these types sit below it so that tasks, tokens and the later stages use them without the zoo.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from geosane.arch.keys import key_mismatch
from geosane.arch.libraries import ARCH_LIBRARIES, arch_library
from geosane.errors import SourceError

__all__ = [
    "TASK_KWARGS",
    "ArchSpec",
    "LoadedModel",
    "arch_family",
    "build_architecture",
    "parse_arch",
    "same_architecture",
]

# kwargs that do not change the backbone: heads are re-initialised and stems adapted per task
TASK_KWARGS = (
    "num_classes",
    "in_chans",
    "global_pool",
    "drop_rate",
    "drop_path_rate",
    "classes",
    "in_channels",
)


@dataclass(frozen=True)
class ArchSpec:
    """How to instantiate an architecture: ``timm.create_model(name, **kwargs)`` for ``library='timm'``,
    ``segmentation_models_pytorch.create_model(name, **kwargs)`` for ``'smp'`` (:mod:`geosane.arch.libraries`)."""

    library: str
    name: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"library": self.library, "name": self.name, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ArchSpec:
        return cls(library=data["library"], name=data["name"], kwargs=dict(data.get("kwargs") or {}))


@dataclass
class LoadedModel:
    """Named tensors of a model, where they came from, and (if known) how to rebuild it.

    ``info`` holds what is known about the model: ``pretrained`` (bool), ``in_chans``,
    ``num_classes``, ``license``, ``task``, ``modality`` ...
    """

    source: str
    state_dict: dict[str, torch.Tensor]
    arch: ArchSpec | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        return sum(t.numel() for t in self.state_dict.values())

    @property
    def unknown_architecture(self) -> str:
        """Why the architecture is unknown, as a sentence to append to an error (``""``: no reason known)."""
        reason = self.info.get("no_architecture")
        return f" ({reason})" if reason else ""

    def build(self, load_weights: bool = True) -> nn.Module:
        """Instantiate the architecture and (by default) load these weights strictly."""
        if self.arch is None:
            raise SourceError(
                f"{self.source}: the architecture is unknown, so a model cannot be built from these weights "
                f"(use a timm:/zoo source or a checkpoint with an architecture record){self.unknown_architecture}"
            )
        model = build_architecture(self.arch)
        if load_weights:
            problem = key_mismatch(model.state_dict(), self.state_dict)
            if problem:
                raise SourceError(f"{self.source}: weights do not fit {self.arch.library}:{self.arch.name}: {problem}")
            model.load_state_dict(self.state_dict)
        return model


def build_architecture(arch: ArchSpec) -> nn.Module:
    """Instantiate an architecture with random weights (no download), through its library."""
    return arch_library(arch.library).build(arch.name, dict(arch.kwargs))


def parse_arch(text: str | ArchSpec | None, kwargs: Mapping[str, Any] | None = None) -> ArchSpec | None:
    """``"timm:NAME"`` / ``"smp:NAME"`` (or a bare timm name) plus kwargs as an :class:`ArchSpec`."""
    if text is None or isinstance(text, ArchSpec):
        return text
    library, sep, name = text.partition(":")
    if not sep:
        library, name = "timm", text
    if library not in ARCH_LIBRARIES or not name:
        raise SourceError(
            f"architecture '{text}' must look like timm:NAME or smp:NAME (e.g. timm:resnet18, smp:Unet)"
        )
    arch_library(library).check_name(name)
    return ArchSpec(library, name, dict(kwargs or {}))


def arch_family(arch: ArchSpec | None) -> str | None:
    """The family of an architecture: the timm module defining it (``resnet``, ``convnext`` ...), or
    for smp the decoder and encoder family (``unet-efficientnet``)."""
    if arch is None or arch.library not in ARCH_LIBRARIES:
        return None
    return arch_library(arch.library).family(arch.name, dict(arch.kwargs))


def same_architecture(a: ArchSpec, b: ArchSpec) -> bool:
    """Same library, model name and backbone kwargs (head size, band count and dropout may differ)."""

    def core(spec: ArchSpec) -> dict[str, Any]:
        return {k: v for k, v in spec.kwargs.items() if k not in TASK_KWARGS}

    return a.library == b.library and a.name == b.name and core(a) == core(b)
