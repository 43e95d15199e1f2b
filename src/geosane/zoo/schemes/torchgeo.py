"""``torchgeo:WEIGHTS_ENUM``: TorchGeo pretrained weights (optional extra), e.g.
``torchgeo:ResNet18_Weights.SENTINEL2_ALL_MOCO``, as timm backbones, smp U-Nets or TorchGeo's own
model classes (``torchgeo`` records: DOFA, CROMA, Scale-MAE, Copernicus-FM, Panopticon, EarthLoc,
Swin; Aurora, a weather model, is refused with the reason)."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from geosane.arch.keys import key_mismatch
from geosane.arch.meta import empty_architecture
from geosane.arch.spec import ArchSpec, LoadedModel, build_architecture
from geosane.arch.torchgeo_models import LEFT_OUT, TORCHGEO_MODELS, describe_transforms, remap_checkpoint
from geosane.data import RAW_UNITS
from geosane.errors import SourceError
from geosane.io import load_torch
from geosane.zoo.formats import load_weights_file
from geosane.zoo.schemes.hf import hf_offline

__all__ = ["resolve_torchgeo", "torchgeo_arch", "torchgeo_builder", "torchgeo_inputs"]

# Keys that TorchGeo's own model builders leave at their initial values when loading its weights
# (heads and, for some ViT weights, the final norm); we fill them from the same initialisation.
_TORCHGEO_TOLERATED = {"fc.weight", "fc.bias", "head.weight", "head.bias", "norm.weight", "norm.bias"}


def _torchgeo_weights(name: str) -> Any:
    try:
        from torchgeo.models import get_weight
    except ImportError:
        raise SourceError(
            "torchgeo sources need the optional TorchGeo extra: pip install 'geosane[torchgeo]'"
        ) from None
    try:
        return get_weight(name)
    except (ValueError, KeyError):
        enum_name = name.split(".")[0]
        from torchgeo.models import get_model_weights, list_models

        enums: list[str] = []
        for model_name in list_models():
            try:
                enums.extend(str(w) for w in get_model_weights(model_name))
            except (KeyError, ValueError):
                continue
        close = [e for e in enums if e.startswith(enum_name)][:4] or enums[:4]
        raise SourceError(f"unknown TorchGeo weights '{name}'; e.g. {', '.join(close)}") from None


def torchgeo_builder(weights: Any) -> str | None:
    """The name of TorchGeo's builder for ``weights`` (``resnet18`` for ``ResNet18_Weights``)."""
    from torchgeo.models import get_model_weights, list_models

    for model_name in list_models():
        try:
            if get_model_weights(model_name) is type(weights):
                return str(model_name)
        except (KeyError, ValueError):
            continue
    return None


def torchgeo_arch(weights: Any) -> ArchSpec | None:
    """The architecture TorchGeo loads ``weights`` into (None only for Aurora, see ``LEFT_OUT``).

    The timm model name is the name of TorchGeo's builder for the weights' enum (``resnet18`` for
    ``ResNet18_Weights``); ``in_chans`` and, for DINOv2 ViTs, ``img_size`` come from the weights'
    ``meta``. Heads are absent from TorchGeo's backbone weights, so ``num_classes=0``. TorchGeo's
    ``unet`` builder is ``smp.create_model("Unet", encoder_name=meta["encoder"], ...)`` with the
    full model (head included) in its weights. Every other builder (DOFA, CROMA, Scale-MAE,
    Copernicus-FM, Panopticon, EarthLoc, Swin) is a ``torchgeo`` record: TorchGeo's own class with
    the kwargs it derives from ``meta`` (:data:`geosane.arch.torchgeo_models.TORCHGEO_MODELS`).
    """
    import timm

    builder = torchgeo_builder(weights)
    meta = weights.meta
    if builder == "unet" and meta.get("encoder"):
        kwargs_smp = {"encoder_name": str(meta["encoder"]), "in_channels": int(meta.get("in_chans") or 3),
                      "classes": int(meta.get("num_classes") or 1)}  # fmt: skip
        return ArchSpec("smp", "Unet", kwargs_smp)
    if builder in TORCHGEO_MODELS:
        return ArchSpec("torchgeo", builder, TORCHGEO_MODELS[builder].kwargs_from_meta(meta))
    if builder is None or not timm.is_model(builder):
        return None
    kwargs: dict[str, Any] = {"num_classes": 0}
    if meta.get("in_chans"):
        kwargs["in_chans"] = int(meta["in_chans"])
    if meta.get("img_size"):
        kwargs["img_size"] = int(meta["img_size"])
    return ArchSpec("timm", builder, kwargs)


def _torchgeo_download(weights: Any, name: str) -> Path:
    """The weights file in torch hub's checkpoint cache (where TorchGeo itself caches it)."""
    url = weights.url
    filename = Path(urlparse(url).path).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if cached.is_file():
        return cached
    if hf_offline():
        raise SourceError(
            f"torchgeo:{name}: weights are not cached and downloads are off (HF_HUB_OFFLINE=1); "
            f"download {url} to {cached}"
        )
    match = torch.hub.HASH_REGEX.search(filename)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(cached), hash_prefix=match.group(1) if match else None)
    except (OSError, RuntimeError, ValueError) as exc:
        raise SourceError(
            f"torchgeo:{name}: cannot download {url} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            f"without internet, place the file at {cached}"
        ) from None
    return cached


def torchgeo_inputs(weights: Any, arch: ArchSpec | None) -> dict[str, Any]:
    """Expected input bands and normalisation of ``weights`` (from its ``meta`` and transforms)."""
    meta = dict(weights.meta)
    entry = TORCHGEO_MODELS.get(arch.name) if arch is not None and arch.library == "torchgeo" else None
    bands = meta.get("bands")
    out: dict[str, Any] = {
        "in_chans": meta.get("in_chans") or (entry.in_chans if entry else None),
        "bands": list(bands) if bands else None,
        "bands_note": None if bands else (entry.bands if entry else "unknown"),
    }
    if meta.get("mean") is not None and meta.get("std") is not None:
        out["normalization"] = {"mean": list(meta["mean"]), "std": list(meta["std"]), "units": RAW_UNITS,
                                "torchgeo": "meta mean/std"}  # fmt: skip
    else:
        out.update(describe_transforms(weights.transforms))
    return out


def resolve_torchgeo(
    name: str, *, random_init: bool = False, in_chans: int | None = None, num_classes: int | None = None
) -> LoadedModel:
    weights = _torchgeo_weights(name)
    builder = torchgeo_builder(weights)
    if builder in LEFT_OUT:
        raise SourceError(f"torchgeo:{name} is not supported: {LEFT_OUT[builder]}")
    arch = torchgeo_arch(weights)
    path = _torchgeo_download(weights, name)
    meta = dict(weights.meta)
    notes: list[str] = []
    if arch is not None and arch.library == "torchgeo":
        raw = load_torch(path)  # weights-only; the table unwraps it explicitly
        try:
            state_dict, notes = remap_checkpoint(arch.name, raw, meta, arch.kwargs)
        except SourceError as exc:
            raise SourceError(f"torchgeo:{name}: {path.name}: {exc}") from None
        del raw
    else:
        state_dict = load_weights_file(path)
    segmenter = arch is not None and arch.library == "smp"
    inputs = torchgeo_inputs(weights, arch)
    info: dict[str, Any] = {
        "pretrained": True,
        "in_chans": meta.get("in_chans"),
        "num_classes": meta.get("num_classes") if segmenter else (0 if arch else None),
        "bands": inputs["bands"],
        "license": meta.get("license"),
        "task": "segmentation" if segmenter else "backbone",
        "name": f"torchgeo-{name}",
        "torchgeo": {k: v for k, v in meta.items() if isinstance(v, (str, int, float))},
        "metadata": {"input": inputs},
    }
    if arch is not None and arch.library == "torchgeo":
        fixed = TORCHGEO_MODELS[arch.name].in_chans
        info["in_chans"] = meta.get("in_chans") or (fixed if isinstance(fixed, int) else None)
        info["num_classes"] = None
        if notes:
            info["remapped"] = notes
            info["metadata"]["remapped"] = notes
    if arch is not None and state_dict:
        state_dict, filled = _check_keys(name, arch, state_dict)
        if filled:
            info["filled_from_init"] = filled
            info["metadata"]["filled_from_init"] = filled
    return LoadedModel(source=f"torchgeo:{name}", state_dict=state_dict, arch=arch, info=info)


def _check_keys(
    name: str, arch: ArchSpec, state_dict: dict[str, torch.Tensor]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Every published key must be used, and every missing one be a key TorchGeo tolerates as
    missing (filled from a seeded initialisation and listed); else one line naming the first
    missing and the first unexpected key."""
    if arch.library == "torchgeo":
        tolerated = TORCHGEO_MODELS[arch.name].tolerated
    else:
        tolerated = frozenset(_TORCHGEO_TOLERATED)
    fresh = empty_architecture(arch).state_dict()
    problem = key_mismatch(fresh, state_dict, tolerated)
    if problem:
        raise SourceError(f"torchgeo:{name}: weights do not fit {arch.library}:{arch.name} {arch.kwargs}: {problem}")
    missing = [k for k in fresh if k not in state_dict]
    if not missing:
        return state_dict, []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        initial = build_architecture(arch).state_dict()
    filled = {k: initial[k].detach().clone() for k in missing}
    del initial
    return {**state_dict, **filled}, missing
