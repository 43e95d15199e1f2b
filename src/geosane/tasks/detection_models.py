"""Object detectors on the timm backbones the zoo and the generator use (torchvision's detectors).

The architecture itself is :mod:`geosane.arch.detector` (the ``detector`` architecture library, so
that a detector can be recorded, tokenized and rebuilt like any model); this module is the task
side: :func:`detector_spec` writes the record, :func:`build_detector` builds it and puts a
classifier's weights into its backbone.

Which tensors are *carried*: the timm backbone's, under the classifier's own names, so a zoo
member's or a generated candidate's state dict (a plain timm classifier) loads into it
(:func:`load_backbone_state`, :func:`backbone_state` for the way back). ``FeatureGetterNet`` prunes
the classifier head (and stages past the last feature level used), so those tensors are dropped;
the FPN, its extra level and the detection heads are always fresh.

Sizes: torchvision's transform resizes images to ``min_size``/``max_size``; both are ``image_size``
so images of that size are not rescaled, and normalisation (``image_mean``/``image_std``) happens
in that one place, inside the model: a :class:`Detector` takes pixels in ``[0, 1]`` (or uint8).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, cast

import torch
from timm.models._features import FeatureGetterNet
from torch import nn

from geosane.arch.detector import BACKBONE_PREFIX, DETECTOR_KINDS, Detector, DetectorKind, TimmFPNBackbone
from geosane.arch.libraries import arch_library
from geosane.arch.spec import ArchSpec, LoadedModel, build_architecture
from geosane.data.tensors import Normalization
from geosane.errors import GeosaneError, SourceError

__all__ = [
    "BACKBONE_PREFIX",
    "DETECTOR_KINDS",
    "Detector",
    "DetectorKind",
    "TimmFPNBackbone",
    "backbone_state",
    "build_detector",
    "detector_spec",
    "load_backbone_state",
]


def _timm_spec(arch: ArchSpec | LoadedModel | str) -> ArchSpec:
    spec = (
        arch.arch
        if isinstance(arch, LoadedModel)
        else ArchSpec("timm", arch)
        if isinstance(arch, str)
        else arch
    )
    if spec is None:
        raise SourceError(
            f"{cast(LoadedModel, arch).source}: unknown architecture, cannot build a detector from it"
        )
    if spec.library != "timm":
        what = arch_library(spec.library).task
        raise GeosaneError(f"{spec.library}:{spec.name} is a {what} model; a detector needs a timm backbone")
    return spec


def detector_spec(
    backbone: ArchSpec | str,
    num_classes: int,
    *,
    kind: str = "fcos",
    in_chans: int | None = None,
    image_size: int = 128,
    normalization: Normalization | None = None,
    out_indices: Sequence[int] | None = None,
    fpn_channels: int = 128,
    anchor_sizes: Sequence[int] | None = None,
    **detector_kwargs: Any,
) -> ArchSpec:
    """The architecture record of a ``kind`` detector on the timm ``backbone`` (see :func:`build_detector`)."""
    if kind not in DETECTOR_KINDS:
        raise GeosaneError(f"unknown detector kind='{kind}' (choose from {', '.join(DETECTOR_KINDS)})")
    if num_classes < 1:
        raise GeosaneError(f"a detector needs num_classes >= 1, got {num_classes}")
    if image_size < 32:
        raise GeosaneError(f"image_size must be >= 32, got {image_size}")
    if kind == "fcos" and fpn_channels % 32:
        raise GeosaneError(
            f"fcos needs fpn_channels divisible by 32 (its heads' GroupNorm), got {fpn_channels}"
        )
    spec = _timm_spec(backbone)
    backbone_kwargs = {k: v for k, v in spec.kwargs.items() if k not in ("num_classes", "in_chans")}
    channels = int(spec.kwargs.get("in_chans", 3)) if in_chans is None else int(in_chans)
    if normalization is None:
        if channels != 3:
            raise GeosaneError(f"a {channels}-band detector needs normalization= (ImageNet's is RGB only)")
        normalization = Normalization.imagenet()
    if len(normalization.mean) != channels:
        raise GeosaneError(f"normalization has {len(normalization.mean)} bands, the detector {channels}")
    kwargs: dict[str, Any] = {
        "backbone": spec.name,
        "backbone_kwargs": backbone_kwargs,
        "num_classes": int(num_classes),
        "in_chans": channels,
        "image_size": int(image_size),
        "fpn_channels": int(fpn_channels),
        "image_mean": [float(v) for v in normalization.mean],
        "image_std": [float(v) for v in normalization.std],
    }
    if out_indices is not None:
        kwargs["out_indices"] = [int(i) for i in out_indices]
    if anchor_sizes is not None:
        kwargs["anchor_sizes"] = [int(s) for s in anchor_sizes]
    if detector_kwargs:
        kwargs["detector_kwargs"] = dict(detector_kwargs)
    return ArchSpec("detector", kind, kwargs)


def build_detector(
    arch: ArchSpec | LoadedModel | str,
    num_classes: int,
    *,
    kind: str = "fcos",
    in_chans: int | None = None,
    backbone_weights: Mapping[str, torch.Tensor] | None = None,
    image_size: int = 128,
    normalization: Normalization | None = None,
    out_indices: Sequence[int] | None = None,
    fpn_channels: int = 128,
    anchor_sizes: Sequence[int] | None = None,
    **detector_kwargs: Any,
) -> Detector:
    """A ``kind`` detector (``fcos`` | ``retinanet`` | ``faster_rcnn``) on the timm backbone ``arch``.

    ``arch``: an ArchSpec, a timm model name, or a LoadedModel (whose weights are the default
    ``backbone_weights``). ``backbone_weights``: a classifier state dict of ``arch`` (its head may be
    for other classes; it is dropped); ``None`` with an ArchSpec is random init. ``out_indices``: the
    timm feature levels fed to the FPN (default the last three, strides 8/16/32 on a ResNet); one
    extra coarser level is added. ``anchor_sizes``: one per level including the extra one (default
    twice the level's stride, small for remote-sensing objects; FCOS: the stride, which sets the
    object sizes each level learns). ``normalization`` defaults to ImageNet's (RGB only).
    ``detector_kwargs`` go to torchvision's model (``score_thresh``, ``detections_per_img``, ...).
    The model's architecture record is :func:`detector_spec`'s.
    """
    spec = detector_spec(
        _timm_spec(arch), num_classes, kind=kind, in_chans=in_chans, image_size=image_size, normalization=normalization,
        out_indices=out_indices, fpn_channels=fpn_channels, anchor_sizes=anchor_sizes, **detector_kwargs,
    )  # fmt: skip
    detector = cast(Detector, build_architecture(spec))
    weights = (
        arch.state_dict if isinstance(arch, LoadedModel) and backbone_weights is None else backbone_weights
    )
    if weights is not None:
        load_backbone_state(detector, weights)
    return detector


def load_backbone_state(
    detector: Detector, state_dict: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str]]:
    """Load a classifier's ``state_dict`` into ``detector``'s backbone; returns (carried, dropped).

    ``carried``: the classifier names now in the backbone (bitwise copies); ``dropped``: its tensors
    with no place in a detector (the classifier head, pruned stages). Every backbone tensor must be
    given, with its shape, else :class:`geosane.errors.SourceError` (nothing is loaded then).
    """
    own = backbone_state(detector)
    carried, dropped = [], []
    for key, value in state_dict.items():
        if key not in own:
            dropped.append(key)
            continue
        if own[key].shape != value.shape:
            raise SourceError(
                f"weights do not fit the detector's backbone: '{key}' has shape {tuple(value.shape)}, "
                f"the backbone expects {tuple(own[key].shape)}"
            )
        carried.append(key)
    missing = [k for k in own if k not in state_dict]
    if missing:
        raise SourceError(f"weights do not fit the detector's backbone: missing {missing[:5]}")
    body: nn.Module = cast(FeatureGetterNet, detector.backbone).model
    body.load_state_dict({k: state_dict[k] for k in carried}, strict=True)
    return carried, dropped


def backbone_state(detector: Detector) -> dict[str, torch.Tensor]:
    """The detector's backbone tensors under the classifier's names (a fine-tuned backbone's way back)."""
    body: nn.Module = cast(FeatureGetterNet, detector.backbone).model
    return dict(body.state_dict())
