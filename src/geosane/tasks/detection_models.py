"""Object detectors on the timm backbones the zoo and the generator use (torchvision's detectors).

:func:`build_detector` puts a timm model (wrapped in timm's ``FeatureGetterNet``, as
:func:`geosane.tasks.build_segmenter` does) under torchvision's ``FeaturePyramidNetwork`` and one of
torchvision's detection models: ``fcos`` (anchor-free), ``retinanet`` or ``faster_rcnn``. No
detector is written here; only the glue that makes a generated backbone a detector's backbone.

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

from geosane.arch.libraries import arch_library
from geosane.arch.spec import ArchSpec, LoadedModel
from geosane.data.tensors import Normalization
from geosane.errors import GeosaneError, SourceError
from geosane.tasks.models import backbone_with_weights

__all__ = [
    "BACKBONE_PREFIX",
    "DETECTOR_KINDS",
    "Detector",
    "DetectorKind",
    "TimmFPNBackbone",
    "backbone_state",
    "build_detector",
    "load_backbone_state",
]

DetectorKind = Literal["fcos", "retinanet", "faster_rcnn"]
DETECTOR_KINDS: tuple[str, ...] = get_args(DetectorKind)

# where a classifier's tensor ``k`` lives in a Detector's state dict: BACKBONE_PREFIX + k
BACKBONE_PREFIX = "net.backbone.body.model."


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
    :class:`geosane.tasks.TaskModule` uses for ``freeze_backbone`` and ``backbone_lr_scale``.
    """

    def __init__(self, net: nn.Module, kind: DetectorKind, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.net = net
        self.kind = kind
        self.num_classes = num_classes
        self.image_size = image_size
        self.label_offset = 1 if kind == "faster_rcnn" else 0

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
    if arch_library(spec.library).task == "segmentation":
        raise GeosaneError(
            f"{spec.library}:{spec.name} is a segmentation model; a detector needs a timm backbone"
        )
    return spec


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
    """
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
    spec = _timm_spec(arch)
    source = arch if isinstance(arch, LoadedModel) and backbone_weights is None else spec
    model = backbone_with_weights(source, backbone_weights, in_chans)
    channels = int(spec.kwargs.get("in_chans", 3)) if in_chans is None else in_chans
    if normalization is None:
        if channels != 3:
            raise GeosaneError(f"a {channels}-band detector needs normalization= (ImageNet's is RGB only)")
        normalization = Normalization.imagenet()
    if len(normalization.mean) != channels:
        raise GeosaneError(f"normalization has {len(normalization.mean)} bands, the detector {channels}")
    if not hasattr(model, "forward_intermediates"):
        raise GeosaneError(f"{type(model).__name__} has no forward_intermediates; it cannot feed a detector")
    levels = len(cast(Any, model).feature_info)
    indices = tuple(out_indices) if out_indices is not None else tuple(range(max(levels - 3, 0), levels))
    body = FeatureGetterNet(model, out_indices=indices, output_fmt="NCHW")
    strides = [int(s) for s in body.feature_info.reduction()]
    strides.append(strides[-1] * 2)  # the extra level
    backbone = TimmFPNBackbone(body, fpn_channels)
    if anchor_sizes is None:
        anchor_sizes = strides if kind == "fcos" else [2 * s for s in strides]
    if len(anchor_sizes) != len(strides):
        raise GeosaneError(f"anchor_sizes needs {len(strides)} sizes (one per level and the extra one)")
    common: dict[str, Any] = {
        "min_size": image_size,
        "max_size": image_size,
        "image_mean": list(normalization.mean),
        "image_std": list(normalization.std),
    }
    net: nn.Module
    if kind == "faster_rcnn":
        anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), ((0.5, 1.0, 2.0),) * len(strides))
        roi_pool = MultiScaleRoIAlign([str(i) for i in range(len(indices))], output_size=7, sampling_ratio=2)
        net = FasterRCNN(
            backbone, num_classes + 1, rpn_anchor_generator=anchors, box_roi_pool=roi_pool,
            **common, **detector_kwargs,
        )  # fmt: skip
    elif kind == "retinanet":
        octave = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
        sizes = tuple(tuple(round(s * o) for o in octave) for s in anchor_sizes)
        anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(strides))
        net = RetinaNet(backbone, num_classes, anchor_generator=anchors, **common, **detector_kwargs)
    else:
        anchors = AnchorGenerator(tuple((int(s),) for s in anchor_sizes), ((1.0,),) * len(strides))
        fcos_kwargs = {"score_thresh": 0.05, **detector_kwargs}  # torchvision's 0.2 hides an early model
        net = FCOS(backbone, num_classes, anchor_generator=anchors, **common, **fcos_kwargs)
    return Detector(net, cast(DetectorKind, kind), num_classes, image_size)


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
