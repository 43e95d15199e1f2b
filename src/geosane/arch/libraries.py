"""Architecture libraries: the code that turns an architecture record into an ``nn.Module``.

An :class:`~geosane.arch.ArchSpec` names its library; this module knows, per library, how
to build the architecture with random weights (never downloading), which constructor arguments
set the input bands and the classes, which state-dict tensors are the task head, and the default
task. Libraries:

- ``timm``: ``timm.create_model(name, pretrained=False, **kwargs)`` (classifiers and backbones);
- ``smp``: ``segmentation_models_pytorch.create_model(name, encoder_weights=None, **kwargs)``
  (U-Nets and other segmenters; TorchGeo's ``Unet_Weights`` are smp models);
- ``onnx``: a graph converted with onnx2torch (:mod:`geosane.arch.onnx`; :mod:`geosane.zoo.onnx`
  records it), for ONNX files whose architecture no library above describes;
- ``detector``: a torchvision detector (FCOS, RetinaNet, Faster R-CNN) on a timm backbone
  (:mod:`geosane.arch.detector`); the name is the detector kind, the kwargs hold the backbone;
- ``torchgeo``: TorchGeo's own model classes (optional extra) for the weights timm does not
  describe (DOFA, CROMA, Scale-MAE, Copernicus-FM, Panopticon, EarthLoc, Swin): the name is
  TorchGeo's builder, built with ``weights=None`` plus the structure changes TorchGeo makes when
  it loads weights (:mod:`geosane.arch.torchgeo_models` holds the table);
- ``geosane``: model classes geosane writes itself where no library above describes a published
  checkpoint (``prithvi_vit``: Prithvi's ViT with a Conv3d tubelet embedding,
  :mod:`geosane.arch.prithvi`; ``satmae_group_vit``: SatMAE's group-channel ViT,
  :mod:`geosane.arch.satmae`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from geosane.errors import GeosaneError, SourceError

__all__ = ["ARCH_LIBRARIES", "ArchLibrary", "arch_library"]


@dataclass(frozen=True)
class ArchLibrary:
    """What geosane needs to know about one architecture library.

    ``in_chans_key`` / ``classes_key``: the constructor arguments for input bands and classes.
    ``head_prefixes``: state-dict prefixes of the task head (re-initialised for other classes).
    ``task``: the task its models solve unless a record says otherwise.
    """

    name: str
    build: Callable[[str, dict[str, Any]], nn.Module]
    check_name: Callable[[str], None]
    family: Callable[[str, dict[str, Any]], str | None]
    in_chans_key: str
    classes_key: str
    head_prefixes: tuple[str, ...]
    task: str
    # (submodule paths of the multi-scale stages, channels-last?) for models without timm's
    # forward_intermediates that can still feed a segmentation decoder; None: they cannot
    stages: Callable[[str], tuple[tuple[str, ...], bool] | None] = lambda name: None


# ---------------------------------------------------------------------------------------------
# timm


def _timm_build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import timm

    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise SourceError(f"cannot instantiate timm architecture '{name}' with {kwargs}: {exc}") from None


def _timm_check(name: str) -> None:
    import timm

    if not name or not timm.is_model(name.split(".")[0]):
        raise SourceError(f"unknown timm architecture '{name}'")


def _timm_family(name: str, kwargs: dict[str, Any]) -> str | None:
    """The timm module defining the architecture (``resnet``, ``convnext`` ...)."""
    import timm

    base = name.split(".")[0]
    if not timm.is_model(base):
        return None
    return timm.models.model_entrypoint(base).__module__.rsplit(".", 1)[-1]


# ---------------------------------------------------------------------------------------------
# segmentation_models_pytorch


def _smp() -> Any:
    try:
        import segmentation_models_pytorch as smp
    except ImportError:
        raise SourceError(
            "smp architectures need segmentation_models_pytorch: pip install segmentation-models-pytorch"
        ) from None
    return smp


def _smp_check(name: str) -> None:
    known = _smp().MODEL_ARCHITECTURES_MAPPING
    if name.lower() not in known:
        raise SourceError(
            f"unknown smp architecture '{name}' (known: {', '.join(sorted(a.__name__ for a in known.values()))})"
        )


def _smp_build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    _smp_check(name)
    if kwargs.get("encoder_weights") not in (None, ""):
        raise SourceError(
            f"smp:{name}: encoder_weights={kwargs['encoder_weights']!r} would download weights; "
            "architecture records build random weights and load the recorded tensors"
        )
    kwargs = {k: v for k, v in kwargs.items() if k != "encoder_weights"}
    try:
        model: nn.Module = _smp().create_model(name, encoder_weights=None, **kwargs)
    except (RuntimeError, ValueError, TypeError, KeyError) as exc:
        raise SourceError(f"cannot instantiate smp architecture '{name}' with {kwargs}: {exc}") from None
    return model


def _smp_family(name: str, kwargs: dict[str, Any]) -> str | None:
    """``unet-efficientnet``: the decoder and the encoder's family (its name without the size)."""
    encoder = str(kwargs.get("encoder_name", "resnet34"))
    return f"{name.lower()}-{encoder.split('-')[0].rstrip('0123456789_')}"


# ---------------------------------------------------------------------------------------------
# converted ONNX graphs


def _onnx_build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    from geosane.arch.onnx import build_converted

    return build_converted(kwargs)


def _onnx_check(name: str) -> None:
    raise SourceError(
        f"onnx:{name} cannot be named as an architecture; add the .onnx file itself (its graph is the architecture)"
    )


# ---------------------------------------------------------------------------------------------
# detectors (torchvision's detection models on a timm backbone)


def _detector_build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    from geosane.arch.detector import assemble_detector, check_detector_kwargs

    check_detector_kwargs(name, kwargs)
    backbone_kwargs = {
        **dict(kwargs.get("backbone_kwargs") or {}),
        "in_chans": int(kwargs.get("in_chans", 3)),
    }
    return assemble_detector(name, _timm_build(str(kwargs["backbone"]), backbone_kwargs), kwargs)


def _detector_check(name: str) -> None:
    from geosane.arch.detector import DETECTOR_KINDS

    if name not in DETECTOR_KINDS:
        raise SourceError(f"unknown detector kind '{name}' (choose from {', '.join(DETECTOR_KINDS)})")


def _detector_family(name: str, kwargs: dict[str, Any]) -> str | None:
    """``fcos-resnet``: the detector kind and its backbone's timm family."""
    backbone = _timm_family(str(kwargs.get("backbone", "")), {})
    return f"{name}-{backbone}" if backbone else name


# ---------------------------------------------------------------------------------------------
# TorchGeo's model classes (the table lives in geosane.arch.torchgeo_models)


def _torchgeo_build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    from geosane.arch.torchgeo_models import build_torchgeo

    return build_torchgeo(name, kwargs)


def _torchgeo_check(name: str) -> None:
    from geosane.arch.torchgeo_models import torchgeo_model

    torchgeo_model(name)


def _torchgeo_stages(name: str) -> tuple[tuple[str, ...], bool] | None:
    from geosane.arch.torchgeo_models import TORCHGEO_MODELS

    entry = TORCHGEO_MODELS.get(name)
    return (entry.stages, entry.stages_channels_last) if entry and entry.stages else None


def _torchgeo_family(name: str, kwargs: dict[str, Any]) -> str | None:
    from geosane.arch.torchgeo_models import TORCHGEO_MODELS

    entry = TORCHGEO_MODELS.get(name)
    return entry.family if entry else None


# ---------------------------------------------------------------------------------------------
# geosane's own model classes


def _geosane_classes() -> dict[str, Callable[..., nn.Module]]:
    from geosane.arch.prithvi import PrithviViT
    from geosane.arch.satmae import SatMAEGroupChannelViT

    return {"prithvi_vit": PrithviViT, "satmae_group_vit": SatMAEGroupChannelViT}


def _geosane_check(name: str) -> None:
    known = _geosane_classes()
    if name not in known:
        raise SourceError(f"unknown geosane architecture '{name}' (known: {', '.join(sorted(known))})")


def _geosane_build(name: str, kwargs: dict[str, Any]) -> nn.Module:
    _geosane_check(name)
    try:
        return _geosane_classes()[name](**kwargs)
    except (TypeError, ValueError, GeosaneError) as exc:
        raise SourceError(f"cannot instantiate geosane architecture '{name}' with {kwargs}: {exc}") from None


def _geosane_family(name: str, kwargs: dict[str, Any]) -> str | None:
    return {"prithvi_vit": "prithvi", "satmae_group_vit": "satmae"}.get(name)


# a detector's tensors whose shape depends on the number of classes (FCOS/RetinaNet, Faster R-CNN)
DETECTOR_HEAD_PREFIXES = ("net.head.classification_head.cls_logits.", "net.roi_heads.box_predictor.")


ARCH_LIBRARIES: dict[str, ArchLibrary] = {
    "timm": ArchLibrary(
        name="timm", build=_timm_build, check_name=_timm_check, family=_timm_family,
        in_chans_key="in_chans", classes_key="num_classes", head_prefixes=(), task="classification",
    ),
    "smp": ArchLibrary(
        name="smp", build=_smp_build, check_name=_smp_check, family=_smp_family,
        in_chans_key="in_channels", classes_key="classes",
        head_prefixes=("segmentation_head.", "classification_head."), task="segmentation",
    ),
    "onnx": ArchLibrary(
        name="onnx", build=_onnx_build, check_name=_onnx_check, family=lambda name, kwargs: "onnx",
        in_chans_key="in_chans", classes_key="num_classes", head_prefixes=(), task="unknown",
    ),
    "detector": ArchLibrary(
        name="detector", build=_detector_build, check_name=_detector_check, family=_detector_family,
        in_chans_key="in_chans", classes_key="num_classes", head_prefixes=DETECTOR_HEAD_PREFIXES,
        task="detection",
    ),
    "torchgeo": ArchLibrary(
        name="torchgeo", build=_torchgeo_build, check_name=_torchgeo_check, family=_torchgeo_family,
        in_chans_key="in_chans", classes_key="num_classes", head_prefixes=("head.",), task="backbone",
        stages=_torchgeo_stages,
    ),
    "geosane": ArchLibrary(
        name="geosane", build=_geosane_build, check_name=_geosane_check, family=_geosane_family,
        in_chans_key="in_chans", classes_key="num_classes", head_prefixes=("head.",), task="backbone",
    ),
}  # fmt: skip


def arch_library(name: str) -> ArchLibrary:
    """The library called ``name`` (an error lists the known ones)."""
    try:
        return ARCH_LIBRARIES[name]
    except KeyError:
        raise SourceError(
            f"unknown architecture library '{name}' (supported: {', '.join(ARCH_LIBRARIES)})"
        ) from None
