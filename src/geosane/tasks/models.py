"""Task models: classifiers and segmenters on timm backbones, and whole smp segmenters.

Weights from any source (zoo member, generated candidate, prompt, merge) are state dicts of the
*full* model of their architecture. Both task models therefore start from that full model with the
weights loaded, then adapt it:

- :func:`build_classifier` resets the classifier head for the target classes (``reset_classifier``);
- :func:`build_segmenter` wraps a timm model in timm's ``FeatureGetterNet`` (``forward_intermediates``,
  the same machinery as ``timm.create_model(..., features_only=True)``) and adds a decoder head; an
  smp segmenter (a U-Net ...) keeps its own decoder and gets a head for the target classes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, cast

import torch
import torch.nn.functional as F
from timm.models._features import FeatureGetterNet
from torch import nn

from geosane.arch.libraries import arch_library
from geosane.arch.spec import ArchSpec, LoadedModel, build_architecture
from geosane.errors import GeosaneError, SourceError
from geosane.tasks.heads import DECODERS, build_decoder

__all__ = ["SegmentationModel", "TaskKind", "backbone_with_weights", "build_classifier", "build_segmenter"]

TaskKind = Literal["classification", "multilabel", "segmentation"]


def backbone_with_weights(
    arch: ArchSpec | LoadedModel,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    in_chans: int | None = None,
    num_classes: int | None = None,
    reset_head: bool = False,
) -> nn.Module:
    """The full model of ``arch`` with ``state_dict`` loaded (its task head may differ).

    ``state_dict`` defaults to the LoadedModel's own weights; ``None`` with an ArchSpec means random
    init (training from scratch). ``num_classes`` builds the head for that many classes (smp
    segmenters; timm heads are reset by :func:`build_classifier`). Head tensors whose shapes do not
    match, or all of them with ``reset_head``, are skipped; every other tensor must load.
    """
    if isinstance(arch, LoadedModel):
        if arch.arch is None:
            raise SourceError(f"{arch.source}: unknown architecture, cannot build a task model from it")
        state_dict = arch.state_dict if state_dict is None else state_dict
        arch = arch.arch
    library = arch_library(arch.library)
    kwargs = dict(arch.kwargs)
    if in_chans is not None:
        kwargs[library.in_chans_key] = in_chans
    if num_classes is not None and library.head_prefixes:
        kwargs[library.classes_key] = num_classes
    model = build_architecture(ArchSpec(arch.library, arch.name, kwargs))
    if state_dict is not None:
        _load_backbone_weights(model, state_dict, f"{arch.library}:{arch.name}", library.head_prefixes, reset_head)
    return model


def _head_names(model: nn.Module, prefixes: tuple[str, ...] = ()) -> set[str]:
    """State-dict keys of the model's task head: under ``prefixes``, else timm's ``get_classifier``."""
    if prefixes:
        return {k for k in model.state_dict() if k.startswith(prefixes)}
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    if not isinstance(head, nn.Module):
        return set()
    head_ids = {id(p) for p in head.state_dict(keep_vars=True).values()}
    return {k for k, v in model.state_dict(keep_vars=True).items() if id(v) in head_ids}


def _load_backbone_weights(
    model: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    name: str,
    head_prefixes: tuple[str, ...] = (),
    reset_head: bool = False,
) -> None:
    own = model.state_dict()
    head = _head_names(model, head_prefixes)
    filtered = {}
    for key, value in state_dict.items():
        if key in head and (reset_head or key not in own or own[key].shape != value.shape):
            continue  # a classifier for other classes: the head is re-initialised for the task
        if key in own and own[key].shape != value.shape:
            raise SourceError(
                f"weights do not fit {name}: '{key}' has shape {tuple(value.shape)}, model expects {tuple(own[key].shape)}"
            )
        filtered[key] = value
    missing, unexpected = model.load_state_dict(filtered, strict=False)
    missing = [k for k in missing if k not in head]
    if missing or unexpected:
        raise SourceError(f"weights do not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def build_classifier(
    arch: ArchSpec | LoadedModel,
    num_classes: int,
    state_dict: Mapping[str, torch.Tensor] | None = None,
    in_chans: int | None = None,
    reset_head: bool = False,
) -> nn.Module:
    """A timm classifier with the given backbone weights and a head for ``num_classes``.

    A head of the weights that already fits ``num_classes`` is kept unless ``reset_head`` is set
    (comparisons of backbone initializations give every one the same fresh head).
    """
    spec = arch.arch if isinstance(arch, LoadedModel) else arch
    if spec is not None and arch_library(spec.library).task == "segmentation":
        raise GeosaneError(
            f"{spec.library}:{spec.name} is a segmentation model; it cannot be a classifier (use a segmentation task)"
        )
    model = backbone_with_weights(arch, state_dict, in_chans)
    current = getattr(model, "num_classes", None)
    head = cast(Any, model).get_classifier() if hasattr(model, "get_classifier") else None  # timm API
    head_fits = isinstance(head, nn.Linear) and head.out_features == num_classes
    if reset_head or current != num_classes or not head_fits:
        cast(Any, model).reset_classifier(num_classes)
    return model


def _pick_stages(stages: tuple[str, ...], out_indices: int | tuple[int, ...]) -> tuple[str, ...]:
    """``out_indices`` as timm reads it: an int n is the last n stages, a tuple their indices."""
    if isinstance(out_indices, int):
        return stages[-out_indices:] if out_indices > 0 else stages
    try:
        return tuple(stages[i] for i in out_indices)
    except IndexError:
        raise GeosaneError(f"out_indices {out_indices} out of range for {len(stages)} stages {stages}") from None


class StageFeatures(nn.Module):
    """Multi-scale ``[B, C, h, w]`` maps of named stages of a backbone that has no timm
    ``forward_intermediates`` (TorchGeo's torchvision Swin Transformers), read by forward hooks.

    timm's ``FeatureGetterNet`` needs ``forward_intermediates``; torchvision's
    ``create_feature_extractor`` would FX-trace the model, which TorchGeo's stem-rebuilt models
    need not survive, so the stages' outputs are recorded during the ordinary forward instead.
    """

    def __init__(self, model: nn.Module, stages: tuple[str, ...], channels_last: bool = False) -> None:
        super().__init__()
        self.model = model
        self.stages = tuple(stages)
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs: dict[str, torch.Tensor] = {}

        def keep(path: str) -> Any:
            def hook(module: nn.Module, args: object, output: torch.Tensor) -> None:
                outputs[path] = output.permute(0, 3, 1, 2) if self.channels_last else output

            return hook

        handles = [self.model.get_submodule(p).register_forward_hook(keep(p)) for p in self.stages]
        try:
            self.model(x)
        finally:
            for handle in handles:
                handle.remove()
        return [outputs[p] for p in self.stages]

    def channels(self) -> list[int]:
        """Channels of each stage, from one small forward pass (the stem's band count, 64 px)."""
        conv = next(m for m in self.model.modules() if isinstance(m, nn.Conv2d))
        was_training = self.training
        self.eval()
        with torch.no_grad():
            maps = self(torch.zeros(1, conv.in_channels, 64, 64))
        self.train(was_training)
        return [int(m.shape[1]) for m in maps]


class SegmentationModel(nn.Module):
    """Backbone feature pyramid + decoder head, logits upsampled to the input size."""

    def __init__(self, backbone: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = decoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.backbone(x)
        logits = self.decoder(features)
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_segmenter(
    arch: ArchSpec | LoadedModel,
    num_classes: int,
    decoder: str = "unet",
    state_dict: Mapping[str, torch.Tensor] | None = None,
    in_chans: int | None = None,
    out_indices: int | tuple[int, ...] = 4,
    decoder_channels: int | None = None,
    reset_head: bool = False,
) -> nn.Module:
    """A segmenter: the timm backbone's intermediate features feeding ``decoder`` (linear/unet/upernet),
    or an smp segmenter as it is (its own decoder; ``decoder`` does not apply) with a head for
    ``num_classes``, kept from the weights when it fits unless ``reset_head``."""
    spec = arch.arch if isinstance(arch, LoadedModel) else arch
    if spec is not None and arch_library(spec.library).task == "segmentation":
        return backbone_with_weights(arch, state_dict, in_chans, num_classes=num_classes, reset_head=reset_head)
    if decoder not in DECODERS:
        raise GeosaneError(f"unknown decoder '{decoder}' (choose from {', '.join(DECODERS)})")
    model = backbone_with_weights(arch, state_dict, in_chans)
    backbone: nn.Module
    if hasattr(model, "forward_intermediates"):
        backbone = FeatureGetterNet(model, out_indices=out_indices, output_fmt="NCHW")
        channels = backbone.feature_info.channels()
    else:
        stages = arch_library(spec.library).stages(spec.name) if spec is not None else None
        if stages is None:
            raise GeosaneError(
                f"{type(model).__name__} has no forward_intermediates; it cannot feed a segmentation decoder"
            )
        backbone = StageFeatures(model, _pick_stages(stages[0], out_indices), channels_last=stages[1])
        channels = backbone.channels()
    head = build_decoder(decoder, channels, num_classes, decoder_channels)
    return SegmentationModel(backbone, head)
