"""Resolve a model *source string* into named tensors plus, where possible, its architecture.

Source schemes::

    timm:NAME                 timm architecture; pretrained weights from the hub (or cache),
                              random init only when explicitly asked for (``random_init=True``)
    hf:ORG/NAME[/FILE][@REV]  a Hugging Face Hub repo (safetensors preferred over pickles; works
                              from the local cache with HF_HUB_OFFLINE=1); a timm hub repo's
                              config.json gives the architecture, other repos a published
                              checkpoint layout (Prithvi, SSL4EO-S12, DINOv2 ...)
    geofm:LAYOUT:PATH         a local checkpoint read by a named published layout
                              (:mod:`geosane.arch.layouts`; local files are also recognised by
                              their key signature)
    torchgeo:WEIGHTS_ENUM     TorchGeo pretrained weights (optional extra), e.g.
                              torchgeo:ResNet18_Weights.SENTINEL2_ALL_MOCO
    zoo:ZOO_DIR#MODEL_ID      a model of a geosane zoo
    PATH                      a local .safetensors / .pt / .pth / .bin / .ckpt / .onnx file, or a
                              directory holding exactly one (see :mod:`geosane.zoo.formats`)

Every resolved state dict is validated: empty -> error, NaN/Inf -> error naming the tensor (unless
``allow_nonfinite``). Nothing from a checkpoint is ever executed: pickles load through
``torch.load(weights_only=True)`` and a pickle that needs more is refused.

Each scheme's resolver is a module of :mod:`geosane.zoo.schemes`, registered here with
:func:`register_scheme`; the architecture types (:class:`ArchSpec`, :class:`LoadedModel`,
:func:`build_architecture` ...) live in :mod:`geosane.arch` and are re-exported.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from geosane.arch.libraries import arch_library
from geosane.arch.meta import check_fits, empty_architecture, order_like_architecture
from geosane.arch.spec import ArchSpec, LoadedModel, arch_family, build_architecture, parse_arch
from geosane.errors import SourceError, cli_flags
from geosane.zoo.formats import first_nonfinite, load_weights_file
from geosane.zoo.schemes.cards import timm_arch_from_config
from geosane.zoo.schemes.geofm import resolve_geofm
from geosane.zoo.schemes.hf import choose_weight_files, network_errors, resolve_hf
from geosane.zoo.schemes.local import resolve_file
from geosane.zoo.schemes.package import resolve_package
from geosane.zoo.schemes.timm import resolve_timm
from geosane.zoo.schemes.torchgeo import resolve_torchgeo, torchgeo_arch
from geosane.zoo.schemes.zoo import load_zoo_source, resolve_zoo, split_zoo_source

__all__ = [
    "ArchSpec",
    "LoadedModel",
    "arch_family",
    "build_architecture",
    "check_fits",
    "choose_weight_files",
    "empty_architecture",
    "first_nonfinite",
    "load_weights_file",
    "load_zoo_source",
    "network_errors",
    "order_like_architecture",
    "parse_arch",
    "register_scheme",
    "resolve",
    "split_zoo_source",
    "timm_arch_from_config",
    "torchgeo_arch",
]


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
    allow_nonfinite: bool = False,
    arch: ArchSpec | str | None = None,
    parity_data: str | Path | None = None,
    parity_tolerance: float | None = None,
) -> LoadedModel:
    """Resolve ``source`` into a validated :class:`LoadedModel`.

    ``random_init`` allows a timm architecture without pretrained weights; ``in_chans`` and
    ``num_classes`` are passed to timm architectures (for other sources they only fill ``info``
    where the source says nothing). ``arch`` records the architecture of weights whose source does
    not name one (it must fit them). The state dict must be non-empty and finite unless
    ``allow_nonfinite``; when the architecture is known, keys come in the architecture's order.

    An ONNX file gets an architecture from its sidecar (smp) or by conversion, and the rebuilt
    module is checked against onnxruntime (:mod:`geosane.zoo.onnx`) on real inputs read from
    ``parity_data`` (``.npz`` scenes or an image folder) or else seeded random input, within
    ``parity_tolerance``; the report lands in ``info["metadata"]["onnx_parity"]``.
    """
    scheme, sep, rest = source.partition(":")
    kwargs = {"random_init": random_init, "in_chans": in_chans, "num_classes": num_classes}
    if sep and scheme in _SCHEMES and scheme != "file":
        model = _SCHEMES[scheme](rest, **kwargs)
    elif Path(source).expanduser().exists():
        model = _SCHEMES["file"](str(Path(source).expanduser()), **kwargs)
    elif sep and len(scheme) > 1 and "/" not in scheme and "\\" not in scheme:
        known = ", ".join(f"{s}:" for s in sorted(_SCHEMES) if s != "file")
        raise SourceError(
            f"unknown source scheme '{scheme}:' in '{source}' (known: {known}, or a local path)"
        )
    else:
        raise SourceError(f"model file not found: {source}")
    if not model.state_dict:
        raise SourceError(f"{source}: the state dict is empty (no tensors)")
    if in_chans is not None:
        model.info.setdefault("in_chans", in_chans)
    if num_classes is not None:
        model.info.setdefault("num_classes", num_classes)
    spec = parse_arch(arch)
    onnx_file = model.info.get("onnx_file")
    in_arch_order = False
    if onnx_file and spec is None and model.arch is None:
        from geosane.zoo.onnx import describe_onnx

        model = describe_onnx(model)
        in_arch_order = True  # built from the architecture's own state dict, in its order
    if spec is not None:
        problems = check_fits(spec, model.state_dict)
        if problems:
            raise SourceError(
                f"{source}: weights do not fit {spec.library}:{spec.name}: {'; '.join(problems)}"
            )
        model.arch = spec
    if model.arch is not None:
        if not in_arch_order:
            model.state_dict = order_like_architecture(model.state_dict, model.arch)
        library = arch_library(model.arch.library)
        if model.info.get("in_chans") is None:
            model.info["in_chans"] = model.arch.kwargs.get(library.in_chans_key, 3)
        if model.info.get("num_classes") is None:
            model.info["num_classes"] = model.arch.kwargs.get(library.classes_key)
    if onnx_file and model.arch is not None:
        from geosane.zoo.onnx import DEFAULT_PARITY_TOLERANCE, check_parity, load_parity_images

        tolerance = DEFAULT_PARITY_TOLERANCE if parity_tolerance is None else parity_tolerance
        images = load_parity_images(parity_data, model) if parity_data is not None else None
        report = check_parity(model, images, tolerance)
        model.info["metadata"] = {**(model.info.get("metadata") or {}), "onnx_parity": report.to_dict()}
    if not allow_nonfinite:
        bad = first_nonfinite(model.state_dict)
        if bad is not None:
            tensor = model.state_dict[bad]
            count = int((~torch.isfinite(tensor)).sum())
            raise SourceError(
                f"{source}: tensor '{bad}' holds NaN/Inf values ({count} of {tensor.numel()}); "
                "pass allow_nonfinite=True to load it anyway",
                flags=cli_flags("allow_nonfinite"),
            )
    return model


for _scheme, _resolver in (
    ("timm", resolve_timm),
    ("hf", resolve_hf),
    ("torchgeo", resolve_torchgeo),
    ("geofm", resolve_geofm),
    ("zoo", resolve_zoo),
    ("pkg", resolve_package),
    ("file", resolve_file),  # local paths (no ``file:`` prefix)
):
    register_scheme(_scheme)(_resolver)
