"""Resolve a model *source string* into named tensors plus, where possible, its architecture.

Source schemes::

    timm:NAME                 timm architecture; pretrained weights from the hub (or cache),
                              random init only when explicitly asked for (``random_init=True``)
    PATH                      a local .safetensors / .pt / .pth / .bin file (weights-only loading)

Every loader returns a :class:`LoadedModel`. Nothing from a checkpoint is ever executed: pickles
load through ``torch.load(weights_only=True)`` and a pickle that needs more is refused.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geosane.errors import SourceError, UnsafeCheckpointError

__all__ = [
    "ArchSpec",
    "LoadedModel",
    "build_architecture",
    "load_weights_file",
    "register_scheme",
    "resolve",
]


@dataclass(frozen=True)
class ArchSpec:
    """How to instantiate an architecture: ``timm.create_model(name, **kwargs)`` for ``library='timm'``."""

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

    def build(self, load_weights: bool = True) -> nn.Module:
        """Instantiate the architecture and (by default) load these weights strictly."""
        if self.arch is None:
            raise SourceError(
                f"{self.source}: the architecture is unknown, so a model cannot be built from these weights "
                "(use a timm:/zoo source or a checkpoint with an architecture record)"
            )
        model = build_architecture(self.arch)
        if load_weights:
            missing, unexpected = model.load_state_dict(self.state_dict, strict=False)
            if missing or unexpected:
                raise SourceError(
                    f"{self.source}: weights do not fit {self.arch.library}:{self.arch.name} "
                    f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
                )
        return model


def build_architecture(arch: ArchSpec) -> nn.Module:
    """Instantiate an architecture with random weights (no download)."""
    if arch.library == "timm":
        import timm

        try:
            return timm.create_model(arch.name, pretrained=False, **arch.kwargs)
        except (RuntimeError, ValueError, TypeError, KeyError) as exc:
            raise SourceError(
                f"cannot instantiate timm architecture '{arch.name}' with {arch.kwargs}: {exc}"
            ) from None
    raise SourceError(f"unknown architecture library '{arch.library}' (supported: timm)")


def first_nonfinite(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """Name of the first floating-point tensor holding NaN or Inf, or None."""
    for name, tensor in state_dict.items():
        if (tensor.is_floating_point() or tensor.is_complex()) and not bool(torch.isfinite(tensor).all()):
            return name
    return None


# ---------------------------------------------------------------------------------------------
# scheme registry

Resolver = Callable[..., LoadedModel]
_SCHEMES: dict[str, Resolver] = {}


def register_scheme(scheme: str) -> Callable[[Resolver], Resolver]:
    """Decorator registering a resolver for ``scheme:`` sources."""

    def deco(fn: Resolver) -> Resolver:
        _SCHEMES[scheme] = fn
        return fn

    return deco


def resolve(
    source: str,
    *,
    random_init: bool = False,
    in_chans: int | None = None,
    num_classes: int | None = None,
) -> LoadedModel:
    """Resolve ``source`` into a :class:`LoadedModel`.

    ``random_init`` allows a timm architecture without pretrained weights; ``in_chans`` and
    ``num_classes`` are passed to architectures that accept them.
    """
    scheme, sep, rest = source.partition(":")
    if sep and scheme in _SCHEMES:
        return _SCHEMES[scheme](rest, random_init=random_init, in_chans=in_chans, num_classes=num_classes)
    path = Path(source).expanduser()
    if path.exists():
        return _SCHEMES["file"](
            str(path), random_init=random_init, in_chans=in_chans, num_classes=num_classes
        )
    if sep and len(scheme) > 1 and "/" not in scheme:
        known = ", ".join(f"{s}:" for s in sorted(_SCHEMES) if s != "file")
        raise SourceError(
            f"unknown source scheme '{scheme}:' in '{source}' (known: {known}, or a local path)"
        )
    raise SourceError(f"model file not found: {source}")


# ---------------------------------------------------------------------------------------------
# timm


@register_scheme("timm")
def _resolve_timm(
    name: str, *, random_init: bool = False, in_chans: int | None = None, num_classes: int | None = None
) -> LoadedModel:
    import timm

    if not name:
        raise SourceError("timm source needs a model name, e.g. timm:resnet18")
    base_name = name.split(".")[0]
    if not timm.is_model(base_name):
        close = timm.list_models(f"*{base_name.split('_')[0]}*")[:5]
        raise SourceError(
            f"unknown timm model '{name}'" + (f"; similar: {', '.join(close)}" if close else "")
        )
    kwargs: dict[str, Any] = {}
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    pretrained = not random_init
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (RuntimeError, ValueError, TypeError) as exc:
        if "pretrained" in str(exc).lower() and pretrained:
            raise SourceError(
                f"timm:{name} has no pretrained weights ({exc}); pass --random-init to use random weights"
            ) from None
        raise SourceError(f"cannot instantiate timm:{name} with {kwargs}: {exc}") from None
    except OSError as exc:  # hub unreachable and not cached (huggingface_hub errors derive from OSError)
        raise SourceError(
            f"pretrained weights for timm:{name} could not be fetched and are not cached ({type(exc).__name__}); "
            "connect to the internet, or pass --random-init to use randomly initialised weights"
        ) from None
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    info: dict[str, Any] = {
        "pretrained": pretrained,
        "in_chans": in_chans if in_chans is not None else cfg.get("num_channels", 3),
        "num_classes": getattr(model, "num_classes", num_classes),
        "license": cfg.get("license"),
        "task": "classification",
        "modality": "rgb" if (in_chans in (None, 3)) else f"{in_chans}-band",
    }
    arch = ArchSpec("timm", name, kwargs)
    return LoadedModel(source=f"timm:{name}", state_dict=dict(model.state_dict()), arch=arch, info=info)


# ---------------------------------------------------------------------------------------------
# local files


def load_weights_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read tensors from a .safetensors or a weights-only pickle (.pt/.pth/.bin); never executes code."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as exc:
            raise SourceError(f"corrupt or truncated safetensors file {path}: {exc}") from None
    if suffix in {".pt", ".pth", ".bin", ".ckpt"}:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=False)
        except pickle.UnpicklingError as exc:
            raise UnsafeCheckpointError(
                f"refusing to load {path}: it is not a weights-only checkpoint and would need arbitrary code "
                f"to unpickle ({str(exc).splitlines()[0]})"
            ) from None
        except (RuntimeError, EOFError, OSError, ValueError) as exc:
            raise SourceError(f"corrupt or truncated checkpoint {path}: {str(exc).splitlines()[0]}") from None
        return _tensors_from_object(obj, path)
    raise SourceError(
        f"unsupported model file type '{suffix}' for {path} (expected .safetensors/.pt/.pth/.bin)"
    )


def _tensors_from_object(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """Find the state dict inside a loaded checkpoint object."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return dict(inner)
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise SourceError(f"{path} holds no tensors (found {type(obj).__name__})")


@register_scheme("file")
def _resolve_file(
    path: str, *, random_init: bool = False, in_chans: int | None = None, num_classes: int | None = None
) -> LoadedModel:
    state_dict = load_weights_file(path)
    return LoadedModel(source=str(path), state_dict=state_dict, arch=None, info={"pretrained": True})
