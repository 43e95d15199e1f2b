"""``torchgeo:WEIGHTS_ENUM``: TorchGeo pretrained weights (optional extra), e.g.
``torchgeo:ResNet18_Weights.SENTINEL2_ALL_MOCO``, as timm backbones or smp U-Nets."""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from geosane.arch.meta import check_fits, empty_architecture
from geosane.arch.spec import ArchSpec, LoadedModel, build_architecture
from geosane.errors import SourceError
from geosane.zoo.formats import load_weights_file
from geosane.zoo.schemes.hf import hf_offline

__all__ = ["resolve_torchgeo", "torchgeo_arch"]

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


def torchgeo_arch(weights: Any) -> ArchSpec | None:
    """The architecture TorchGeo loads ``weights`` into (None for models neither timm nor smp build).

    The timm model name is the name of TorchGeo's builder for the weights' enum (``resnet18`` for
    ``ResNet18_Weights``); ``in_chans`` and, for DINOv2 ViTs, ``img_size`` come from the weights'
    ``meta``. Heads are absent from TorchGeo's backbone weights, so ``num_classes=0``. TorchGeo's
    ``unet`` builder is ``smp.create_model("Unet", encoder_name=meta["encoder"], ...)`` with the
    full model (head included) in its weights.
    """
    import timm
    from torchgeo.models import get_model_weights, list_models

    builder = None
    for model_name in list_models():
        try:
            if get_model_weights(model_name) is type(weights):
                builder = model_name
                break
        except (KeyError, ValueError):
            continue
    meta = weights.meta
    if builder == "unet" and meta.get("encoder"):
        kwargs_smp = {"encoder_name": str(meta["encoder"]), "in_channels": int(meta.get("in_chans") or 3),
                      "classes": int(meta.get("num_classes") or 1)}  # fmt: skip
        return ArchSpec("smp", "Unet", kwargs_smp)
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


def resolve_torchgeo(
    name: str, *, random_init: bool = False, in_chans: int | None = None, num_classes: int | None = None
) -> LoadedModel:
    weights = _torchgeo_weights(name)
    arch = torchgeo_arch(weights)
    state_dict = load_weights_file(_torchgeo_download(weights, name))
    meta = dict(weights.meta)
    segmenter = arch is not None and arch.library == "smp"
    info: dict[str, Any] = {
        "pretrained": True,
        "in_chans": meta.get("in_chans"),
        "num_classes": meta.get("num_classes") if segmenter else (0 if arch else None),
        "bands": meta.get("bands"),
        "license": meta.get("license"),
        "task": "segmentation" if segmenter else "backbone",
        "name": f"torchgeo-{name}",
        "torchgeo": {k: v for k, v in meta.items() if isinstance(v, (str, int, float))},
    }
    if arch is not None and state_dict:
        fresh = empty_architecture(arch).state_dict()
        filled = [k for k in fresh if k not in state_dict and k in _TORCHGEO_TOLERATED]
        if filled:
            initial = build_architecture(arch).state_dict()
            state_dict = {**state_dict, **{k: initial[k].clone() for k in filled}}
            info["filled_from_init"] = filled
        problems = check_fits(arch, state_dict, reference=fresh)
        if problems:
            raise SourceError(
                f"torchgeo:{name}: weights do not fit {arch.library}:{arch.name} {arch.kwargs}: {problems[0]}"
            )
    return LoadedModel(source=f"torchgeo:{name}", state_dict=state_dict, arch=arch, info=info)
