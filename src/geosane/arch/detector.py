"""Object detectors as an architecture: torchvision's detection models on a timm backbone.

A detector is one more architecture library (``detector``, :mod:`geosane.arch.libraries`), so that
a trained detector is a model like any other: it is recorded in a zoo, tokenized, generated and
rebuilt from its :class:`~geosane.arch.ArchSpec`. The record is::

    ArchSpec("detector", KIND, {"backbone": "resnet18", "backbone_kwargs": {...}, "num_classes": K,
                                "in_chans": C, "image_size": S, "fpn_channels": 128,
                                "out_indices": [...], "anchor_sizes": [...],
                                "image_mean": [...], "image_std": [...], "detector_kwargs": {...}})

``KIND`` is ``fcos`` (anchor-free), ``retinanet`` or ``faster_rcnn``. The timm model (wrapped in
timm's ``FeatureGetterNet``) feeds torchvision's ``FeaturePyramidNetwork`` and then torchvision's
detection model; nothing here is a detector written by hand, only the glue. Its tensors keep the
timm classifier's names under :data:`BACKBONE_PREFIX`, so a classifier's state dict (a zoo
member, a generated candidate) loads into the backbone (:mod:`geosane.tasks.detection_models`).

This module builds from an already-built timm model (the library passes it in), so it needs no
import of :mod:`geosane.arch.spec` (which imports the libraries: that would be a cycle).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast, get_args

import torch
from timm.models._features import FeatureGetterNet
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import FeaturePyramidNetwork, MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from geosane.errors import SourceError

__all__ = [
    "BACKBONE_PREFIX",
    "DETECTOR_KINDS",
    "Detector",
    "DetectorKind",
    "TimmFPNBackbone",
    "assemble_detector",
    "check_detector_kwargs",
]

DetectorKind = Literal["fcos", "retinanet", "faster_rcnn"]
DETECTOR_KINDS: tuple[str, ...] = get_args(DetectorKind)

# where a classifier's tensor ``k`` lives in a Detector's state dict: BACKBONE_PREFIX + k
BACKBONE_PREFIX = "net.backbone.body.model."

_KEYS = (
    "backbone", "backbone_kwargs", "num_classes", "in_chans", "image_size", "fpn_channels",
    "out_indices", "anchor_sizes", "image_mean", "image_std", "detector_kwargs",
)  # fmt: skip


class TimmFPNBackbone(nn.Module):
    """timm feature levels -> FPN (torchvision's ``BackboneWithFPN`` for a timm body).

    ``body`` is timm's ``FeatureGetterNet`` (its ``model`` is the pruned timm classifier);
    ``out_channels`` is what torchvision's detectors read.
    """

    def __init__(self, body: FeatureGetterNet, out_channels: int) -> None:
        super().__init__()
        self.body = body
        # one extra, max-pooled level (torchvision's Faster R-CNN P6); RetinaNet's P6/P7 would add a
        # stride-128 level, a single cell on the small images remote sensing is cut into
        self.fpn = FeaturePyramidNetwork(
            body.feature_info.channels(), out_channels, extra_blocks=LastLevelMaxPool()
        )
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.body(x)
        return cast(
            dict[str, torch.Tensor], self.fpn(OrderedDict((str(i), f) for i, f in enumerate(features)))
        )


class Detector(nn.Module):
    """A torchvision detector whose labels are geosane's ``0..num_classes-1``.

    ``forward(images, targets)``: images ``[B, C, H, W]`` (uint8, or float in ``[0, 1]``); in training
    mode it returns torchvision's loss dict, in eval mode one ``{"boxes", "scores", "labels"}`` per
    image. Faster R-CNN reserves label 0 for the background, so labels are shifted there and back.
    ``backbone`` / ``decoder`` are the carried timm body and everything fresh (FPN, heads), the split
    :class:`geosane.tasks.FitModule` uses for ``freeze_backbone`` and ``backbone_lr_scale``.
    ``record``: its architecture record (``ArchSpec.to_dict()``), saved with its weights.
    """

    def __init__(
        self,
        net: nn.Module,
        kind: DetectorKind,
        num_classes: int,
        image_size: int,
        record: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.kind = kind
        self.num_classes = num_classes
        self.image_size = image_size
        self.label_offset = 1 if kind == "faster_rcnn" else 0
        # the architecture record it was built from (ArchSpec.to_dict()), saved beside its weights
        self.record = {"library": "detector", "name": kind, "kwargs": dict(record or {})}

    @property
    def backbone(self) -> nn.Module:
        return cast(nn.Module, cast(TimmFPNBackbone, self.net.backbone).body)

    @property
    def decoder(self) -> nn.Module:
        fresh = [m for name, m in self.net.named_children() if name != "backbone"]
        return nn.ModuleList([cast(TimmFPNBackbone, self.net.backbone).fpn, *fresh])

    def forward(
        self, images: torch.Tensor, targets: Sequence[Mapping[str, torch.Tensor]] | None = None
    ) -> Any:
        x = images.float().div(255.0) if images.dtype == torch.uint8 else images
        shifted = None
        if targets is not None:
            shifted = [{"boxes": t["boxes"], "labels": t["labels"] + self.label_offset} for t in targets]
        out = self.net(list(x), shifted)
        if isinstance(out, dict):
            return out
        return [{**p, "labels": p["labels"] - self.label_offset} for p in out]


def check_detector_kwargs(kind: str, kwargs: Mapping[str, Any]) -> None:
    """Refuse a detector record that cannot be built (each message names the field)."""
    if kind not in DETECTOR_KINDS:
        raise SourceError(f"unknown detector kind='{kind}' (choose from {', '.join(DETECTOR_KINDS)})")
    unknown = sorted(set(kwargs) - set(_KEYS))
    if unknown:
        raise SourceError(f"detector record: unknown field(s) {unknown} (known: {', '.join(_KEYS)})")
    if not kwargs.get("backbone"):
        raise SourceError("detector record: 'backbone' (a timm architecture name) is missing")
    num_classes = int(kwargs.get("num_classes", 0))
    if num_classes < 1:
        raise SourceError(f"a detector needs num_classes >= 1, got {num_classes}")
    if int(kwargs.get("image_size", 0)) < 32:
        raise SourceError(f"image_size must be >= 32, got {kwargs.get('image_size')}")
    fpn_channels = int(kwargs.get("fpn_channels", 128))
    if kind == "fcos" and fpn_channels % 32:
        raise SourceError(
            f"fcos needs fpn_channels divisible by 32 (its heads' GroupNorm), got {fpn_channels}"
        )
    in_chans = int(kwargs.get("in_chans", 3))
    for key in ("image_mean", "image_std"):
        if len(kwargs.get(key) or ()) != in_chans:
            raise SourceError(
                f"detector record: {key} has {len(kwargs.get(key) or ())} values for {in_chans} band(s)"
            )


def assemble_detector(kind: str, timm_model: nn.Module, kwargs: Mapping[str, Any]) -> Detector:
    """The ``kind`` detector of a record's ``kwargs`` around ``timm_model`` (random heads)."""
    check_detector_kwargs(kind, kwargs)
    if not hasattr(timm_model, "forward_intermediates"):
        raise SourceError(
            f"{type(timm_model).__name__} has no forward_intermediates; it cannot feed a detector"
        )
    levels = len(cast(Any, timm_model).feature_info)
    out_indices = kwargs.get("out_indices")
    indices = tuple(out_indices) if out_indices else tuple(range(max(levels - 3, 0), levels))
    body = FeatureGetterNet(timm_model, out_indices=indices, output_fmt="NCHW")
    strides = [int(s) for s in body.feature_info.reduction()]
    strides.append(strides[-1] * 2)  # the extra level
    backbone = TimmFPNBackbone(body, int(kwargs.get("fpn_channels", 128)))
    anchor_sizes = kwargs.get("anchor_sizes") or (strides if kind == "fcos" else [2 * s for s in strides])
    if len(anchor_sizes) != len(strides):
        raise SourceError(f"anchor_sizes needs {len(strides)} sizes (one per level and the extra one)")
    image_size = int(kwargs["image_size"])
    common: dict[str, Any] = {
        "min_size": image_size,
        "max_size": image_size,
        "image_mean": [float(v) for v in kwargs["image_mean"]],
        "image_std": [float(v) for v in kwargs["image_std"]],
    }
    extra = dict(kwargs.get("detector_kwargs") or {})
    num_classes = int(kwargs["num_classes"])
    net: nn.Module
    if kind == "faster_rcnn":
        anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * len(strides))
        roi_pool = MultiScaleRoIAlign([str(i) for i in range(len(indices))], output_size=7, sampling_ratio=2)
        net = FasterRCNN(
            backbone, num_classes + 1, rpn_anchor_generator=anchors, box_roi_pool=roi_pool, **common, **extra
        )
    elif kind == "retinanet":
        octave = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
        sizes = tuple(tuple(round(s * o) for o in octave) for s in anchor_sizes)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))
        net = RetinaNet(backbone, num_classes, anchor_generator=anchors, **common, **extra)
    else:
        anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), ((1.0,),) * len(strides))
        fcos_kwargs = {"score_thresh": 0.05, **extra}  # torchvision's 0.2 hides an early model
        net = FCOS(backbone, num_classes, anchor_generator=anchors, **common, **fcos_kwargs)
    return Detector(net, cast(DetectorKind, kind), num_classes, image_size, kwargs)
