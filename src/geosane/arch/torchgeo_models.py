"""TorchGeo's own model classes (the ``torchgeo`` architecture library): one table, one reason each.

TorchGeo ships weights for models that timm does not describe (DOFA, CROMA, Scale-MAE,
Copernicus-FM, Panopticon, EarthLoc, torchvision's Swin). Its builders change the model's
structure when they load weights (a Swin stem rebuilt for the weights' bands, EarthLoc's
backbone from ``meta``) and some rewrite the checkpoint on the way in (Panopticon drops a key,
nests the rest and resizes a tensor). geosane rebuilds that exact structure with random values
(``weights=None``, never downloading) and applies the rewriting explicitly, so that every key of
the published file is accounted for: :data:`TORCHGEO_MODELS` holds, per builder, the structure,
the key remapping, the keys TorchGeo itself tolerates as missing and the input it expects.

Aurora (``aurora_swin_unet``) is a weather model (atmospheric variables on pressure levels, not
image bands) and stays out; :data:`LEFT_OUT` says so in every error that meets it.

This module sits below :mod:`geosane.arch.libraries` (which imports it lazily); it imports
neither that module nor :mod:`geosane.arch.spec`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from geosane.errors import SourceError

__all__ = [
    "LEFT_OUT",
    "TORCHGEO_MODELS",
    "TorchGeoModel",
    "build_torchgeo",
    "describe_transforms",
    "remap_checkpoint",
    "torchgeo_model",
]

LEFT_OUT: dict[str, str] = {
    "aurora_swin_unet": (
        "Aurora is a weather model: it takes atmospheric and surface variables on pressure levels "
        "with a time step, not image bands, so no geosane stage (probe, finetune, tokenize) can feed it"
    ),
}

Remap = Callable[[Any, Mapping[str, Any], Mapping[str, Any]], tuple[dict[str, torch.Tensor], list[str]]]


@dataclass(frozen=True)
class TorchGeoModel:
    """What geosane knows about one TorchGeo builder.

    ``kwargs_from_meta``: the architecture kwargs the builder derives from the weights' ``meta``
    when it loads them. ``allowed``: kwargs the record may carry. ``remap``: published checkpoint
    object -> (state dict in the model's keys, notes on what was rewritten). ``tolerated``: keys
    TorchGeo's own loader accepts as missing (filled from a seeded initialisation and listed).
    ``bands`` / ``in_chans``: the input when ``meta`` does not name it (``"any"``: the model
    takes any number of bands, described by their wavelengths at forward time). The checkpoint object
    is read whole (``torch.load(weights_only=True)``), so no wrapper is unwrapped silently.
    """

    builder: str
    family: str
    reason: str
    kwargs_from_meta: Callable[[Mapping[str, Any]], dict[str, Any]]
    allowed: frozenset[str]
    build: Callable[[str, dict[str, Any]], nn.Module]
    remap: Remap
    tolerated: frozenset[str] = field(default_factory=frozenset)
    bands: str = "unknown"
    in_chans: int | str | None = None
    # submodules whose outputs are the multi-scale maps a segmentation decoder reads (the model has
    # no timm forward_intermediates), and whether they are [B, H, W, C] (torchvision's Swin)
    stages: tuple[str, ...] = ()
    stages_channels_last: bool = False


# ---------------------------------------------------------------------------------------------
# builders


def _models() -> Any:
    try:
        import torchgeo.models as models
    except ImportError:
        raise SourceError(
            "torchgeo architectures need the optional TorchGeo extra: pip install 'geosane[torchgeo]'"
        ) from None
    return models


def _call_builder(name: str, kwargs: dict[str, Any]) -> nn.Module:
    """TorchGeo's builder with ``weights=None`` (no download), kwargs passed through."""
    module: nn.Module = getattr(_models(), name)(None, **kwargs)
    return module


def _swin_stem(model: nn.Module, in_chans: int) -> nn.Module:
    """TorchGeo rebuilds the patch stem for ``meta['in_chans']`` bands whenever it loads weights."""
    features: Any = model.features
    out_channels = features[0][0].out_channels
    features[0][0] = nn.Conv2d(in_chans, out_channels, kernel_size=(4, 4), stride=(4, 4))
    return model


def _build_swin(name: str, kwargs: dict[str, Any]) -> nn.Module:
    import torchvision

    in_chans = int(kwargs.get("in_chans", 3))
    if name == "swin_b":  # TorchGeo builds swin_b itself, with meta's window size and depth 0.5
        window = int(kwargs.get("window_size", 7))
        model: nn.Module = torchvision.models.SwinTransformer(
            patch_size=[4, 4],
            embed_dim=128,
            depths=[2, 2, 18, 2],
            num_heads=[4, 8, 16, 32],
            window_size=[window, window],
            stochastic_depth_prob=0.5,
        )
    else:
        model = getattr(torchvision.models, name)(weights=None)
    return _swin_stem(model, in_chans)


def _build_earthloc(name: str, kwargs: dict[str, Any]) -> nn.Module:
    _models()
    from torchgeo.models.earthloc import EarthLoc

    module: nn.Module = EarthLoc(**kwargs, pretrained=False)  # pretrained=True would download
    return module


# ---------------------------------------------------------------------------------------------
# checkpoint remapping (published file -> the model's state-dict keys)


def _flat(
    obj: Any, meta: Mapping[str, Any], kwargs: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Published as a flat state dict in the model's own keys."""
    return _tensor_dict(obj), []


def _tensor_dict(obj: Any) -> dict[str, torch.Tensor]:
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise SourceError("the checkpoint is not a flat state dict of tensors")
    return dict(obj)


SWIN_FEATURE_NORMS = "feat_norms_state_dict"


def _swin_v1(
    obj: Any, meta: Mapping[str, Any], kwargs: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """TorchGeo's Swin V1 files hold ``{'state_dict': backbone, 'feat_norms_state_dict': norms}``;
    ``swin_*`` loads ``state_dict`` (``SwinBackbone_Weights.get_state_dict``), the per-level
    LayerNorms belong to TorchGeo's BTC change detector, not to the backbone."""
    if not isinstance(obj, Mapping) or "state_dict" not in obj:
        raise SourceError(
            "no 'state_dict' entry (TorchGeo's Swin V1 files hold state_dict + feat_norms_state_dict)"
        )
    extra = [k for k in obj if k not in ("state_dict", SWIN_FEATURE_NORMS)]
    if extra:
        raise SourceError(
            f"unexpected top-level entry '{extra[0]}' (expected state_dict, {SWIN_FEATURE_NORMS})"
        )
    notes = ["loaded the 'state_dict' entry"]
    if SWIN_FEATURE_NORMS in obj:
        norms = obj[SWIN_FEATURE_NORMS]
        count = len(norms) if isinstance(norms, Mapping) else 0
        notes.append(
            f"left out '{SWIN_FEATURE_NORMS}' ({count} tensors: per-level LayerNorms of TorchGeo's BTC "
            "change detector, not part of the Swin backbone; TorchGeo's swin_* builders do not load them)"
        )
    return _tensor_dict(obj["state_dict"]), notes


CROMA_GROUPS = ("s1_encoder", "s1_GAP_FFN", "s2_encoder", "s2_GAP_FFN", "joint_encoder")


def _croma(
    obj: Any, meta: Mapping[str, Any], kwargs: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """CROMA publishes one state dict per sub-module; TorchGeo loads each into its sub-module."""
    if not isinstance(obj, Mapping):
        raise SourceError("the CROMA checkpoint is not a mapping of sub-module state dicts")
    extra = [k for k in obj if k not in CROMA_GROUPS]
    if extra:
        raise SourceError(f"unexpected top-level entry '{extra[0]}' (CROMA has {', '.join(CROMA_GROUPS)})")
    out: dict[str, torch.Tensor] = {}
    for group in CROMA_GROUPS:
        if group not in obj:
            continue
        for key, value in _tensor_dict(obj[group]).items():
            out[f"{group}.{key}"] = value
    return out, [
        f"sub-module state dicts {', '.join(g for g in CROMA_GROUPS if g in obj)} nested as GROUP.KEY"
    ]


PANOPTICON_PATCH = 14
PANOPTICON_TRAIN_SIZE = 518  # the DINOv2 resolution the published pos_embed is laid out for


def _panopticon(
    obj: Any, meta: Mapping[str, Any], kwargs: Mapping[str, Any]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """TorchGeo drops ``mask_token`` (a DINOv2 training token the encoder never uses), resizes
    ``pos_embed`` from 518 px to ``img_size`` and loads the rest into ``model.model``."""
    state = _tensor_dict(obj)
    if "mask_token" not in state or "pos_embed" not in state:
        missing = "mask_token" if "mask_token" not in state else "pos_embed"
        raise SourceError(f"missing '{missing}' (the published Panopticon checkpoint has it)")
    state.pop("mask_token")
    img_size = int(kwargs.get("img_size", 224))
    new, old = img_size // PANOPTICON_PATCH, PANOPTICON_TRAIN_SIZE // PANOPTICON_PATCH
    state["pos_embed"] = panopticon_pos_embed(state["pos_embed"], img_size)
    notes = [
        "dropped 'mask_token' (DINOv2's masking token, unused by the encoder; TorchGeo drops it too)",
        f"resized 'pos_embed' from {old}x{old} to {new}x{new} patches (TorchGeo's resize_abs_pos_embed, bicubic)",
        "nested every key under 'model.'",
    ]
    return {f"model.{k}": v for k, v in state.items()}, notes


def panopticon_pos_embed(pos_embed: torch.Tensor, img_size: int = 224) -> torch.Tensor:
    """The published 518 px ``pos_embed`` resized as TorchGeo resizes it for ``img_size``."""
    from torchgeo.models.copernicusfm import resize_abs_pos_embed

    resized: torch.Tensor = resize_abs_pos_embed(
        pos_embed, img_size // PANOPTICON_PATCH, PANOPTICON_TRAIN_SIZE // PANOPTICON_PATCH
    )
    return resized


# ---------------------------------------------------------------------------------------------
# the table


def _no_kwargs(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {}


def _in_chans(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {"in_chans": int(meta["in_chans"])}


def _swin_b_kwargs(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {"in_chans": int(meta["in_chans"]), "window_size": int(meta.get("window_size", 7))}


def _earthloc_kwargs(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "in_channels": int(meta["in_chans"]),
        "image_size": int(meta["image_size"]),
        "desc_dim": int(meta["desc_dim"]),
        "backbone": str(meta["encoder"]),
    }


_SWIN_V1_TOLERATED = frozenset({"norm.weight", "norm.bias", "head.weight", "head.bias"})
_DYNAMIC_HEAD = frozenset({"fc_norm.weight", "fc_norm.bias", "head.weight", "head.bias"})
_ANY_BANDS = "any bands: the wavelengths (nm) are passed with every input"
_CROMA_BANDS = "two inputs, 120 px: x_optical with 12 Sentinel-2 bands, x_sar with 2 Sentinel-1 bands"


def _swin(builder: str, v2: bool) -> TorchGeoModel:
    return TorchGeoModel(
        builder=builder,
        family="swin_v2" if v2 else "swin",
        reason=(
            "torchvision Swin V2 with its stem rebuilt for meta['in_chans'] bands; every key published"
            if v2
            else "torchvision Swin with its stem rebuilt for meta['in_chans']; the file's 'state_dict' entry, "
            "final norm and head may be absent"
        )
        + (
            " (window_size from meta, stochastic depth 0.5, as TorchGeo builds it)"
            if builder == "swin_b"
            else ""
        ),
        kwargs_from_meta=_swin_b_kwargs if builder == "swin_b" else _in_chans,
        allowed=frozenset({"in_chans", "window_size"} if builder == "swin_b" else {"in_chans"}),
        build=_build_swin,
        remap=_flat if v2 else _swin_v1,
        tolerated=frozenset() if v2 else _SWIN_V1_TOLERATED,
        stages=("features.1", "features.3", "features.5", "features.7"),
        stages_channels_last=True,
    )


TORCHGEO_MODELS: dict[str, TorchGeoModel] = {
    "swin_t": _swin("swin_t", v2=False),
    "swin_s": _swin("swin_s", v2=False),
    "swin_b": _swin("swin_b", v2=False),
    "swin_v2_t": _swin("swin_v2_t", v2=True),
    "swin_v2_b": _swin("swin_v2_b", v2=True),
    "croma_base": TorchGeoModel(
        builder="croma_base",
        family="croma",
        reason="CROMA publishes one state dict per encoder; 'attn_bias' is the 2D-ALiBi buffer CROMA computes",
        kwargs_from_meta=_no_kwargs,
        allowed=frozenset({"modalities", "image_size"}),
        build=_call_builder,
        remap=_croma,
        tolerated=frozenset({"attn_bias"}),
        bands=_CROMA_BANDS,
        in_chans="12 + 2",
    ),
    "dofa_base_patch16_224": TorchGeoModel(
        builder="dofa_base_patch16_224",
        family="dofa",
        reason="DOFA encoder; fc_norm and the head are built per task (TorchGeo tolerates them missing)",
        kwargs_from_meta=_no_kwargs,
        allowed=frozenset({"num_classes", "img_size"}),
        build=_call_builder,
        remap=_flat,
        tolerated=_DYNAMIC_HEAD,
        bands=_ANY_BANDS,
        in_chans="any",
    ),
    "copernicusfm_base": TorchGeoModel(
        builder="copernicusfm_base",
        family="copernicusfm",
        reason="Copernicus-FM encoder; fc_norm and the head are built per task (TorchGeo tolerates them missing)",
        kwargs_from_meta=_no_kwargs,
        allowed=frozenset({"num_classes", "img_size"}),
        build=_call_builder,
        remap=_flat,
        tolerated=_DYNAMIC_HEAD,
        bands="any spectral bands (wavelengths + bandwidths in nm) or variables, plus lon/lat/time/area metadata",
        in_chans="any",
    ),
    "panopticon_vitb14": TorchGeoModel(
        builder="panopticon_vitb14",
        family="panopticon",
        reason="DINOv2 ViT-B/14 with a channel-attention stem: 'mask_token' dropped, 'pos_embed' resized, keys nested",
        kwargs_from_meta=_no_kwargs,
        allowed=frozenset({"img_size"}),
        build=_call_builder,
        remap=_panopticon,
        bands="any bands: channel ids (wavelengths) are passed with every input",
        in_chans="any",
    ),
    "scalemae_large_patch16": TorchGeoModel(
        builder="scalemae_large_patch16",
        family="scalemae",
        reason="timm ViT-L/16 with GSD-scaled position embeddings; the classifier head is not published",
        kwargs_from_meta=_no_kwargs,
        allowed=frozenset({"res"}),
        build=_call_builder,
        remap=_flat,
        tolerated=frozenset({"head.weight", "head.bias"}),
    ),
    "earthloc": TorchGeoModel(
        builder="earthloc",
        family="earthloc",
        reason="timm backbone (meta['encoder'], layer4 removed) + MixVPR; every structure kwarg from meta, strict load",
        kwargs_from_meta=_earthloc_kwargs,
        allowed=frozenset({"in_channels", "image_size", "desc_dim", "backbone"}),
        build=_build_earthloc,
        remap=_flat,
    ),
}


# the ViT-L siblings: the same loading as their base models, only the builder differs
TORCHGEO_MODELS["croma_large"] = replace(
    TORCHGEO_MODELS["croma_base"], builder="croma_large", reason="as croma_base at ViT-L width"
)
TORCHGEO_MODELS["dofa_large_patch16_224"] = replace(
    TORCHGEO_MODELS["dofa_base_patch16_224"],
    builder="dofa_large_patch16_224",
    reason="as dofa_base at ViT-L width",
)


def torchgeo_model(builder: str) -> TorchGeoModel:
    """The table entry of ``builder`` (an error says why Aurora is left out, or lists the known ones)."""
    if builder in LEFT_OUT:
        raise SourceError(f"torchgeo:{builder} is not supported: {LEFT_OUT[builder]}")
    try:
        return TORCHGEO_MODELS[builder]
    except KeyError:
        raise SourceError(
            f"unknown torchgeo architecture '{builder}' (known: {', '.join(sorted(TORCHGEO_MODELS))})"
        ) from None


def build_torchgeo(builder: str, kwargs: dict[str, Any]) -> nn.Module:
    """The model TorchGeo would load weights into, with random values (never downloads)."""
    entry = torchgeo_model(builder)
    unknown = sorted(set(kwargs) - entry.allowed)
    if unknown:
        raise SourceError(
            f"torchgeo:{builder}: unknown architecture kwarg '{unknown[0]}' "
            f"(allowed: {', '.join(sorted(entry.allowed)) or 'none'})"
        )
    try:
        return entry.build(builder, dict(kwargs))
    except (RuntimeError, ValueError, TypeError, KeyError, AssertionError) as exc:
        raise SourceError(f"cannot instantiate torchgeo:{builder} with {kwargs}: {exc}") from None


def remap_checkpoint(
    builder: str, obj: Any, meta: Mapping[str, Any], kwargs: Mapping[str, Any] | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The published checkpoint object in the model's state-dict keys, plus what was rewritten."""
    return torchgeo_model(builder).remap(obj, meta, kwargs or {})


def describe_transforms(transforms: Any) -> dict[str, Any]:
    """The per-band normalisation TorchGeo's ``weights.transforms`` apply, folded into one mean/std.

    Chained ``Normalize(m1, s1)`` then ``Normalize(m2, s2)`` is ``(x - (m1 + m2 s1)) / (s1 s2)``.
    The values are in the units of the raw input TorchGeo's datasets give (e.g. 0-255 or DN).
    Crops and resizes are listed under ``resize``. ``{"normalization": "unknown"}`` when the
    transforms hold no Normalize (TorchGeo gives none for the weights).
    """
    steps = list(transforms) if isinstance(transforms, nn.Sequential) else [transforms]
    mean: list[float] | None = None
    std: list[float] | None = None
    chain: list[str] = []
    resize: list[str] = []
    for step in steps:
        kind = type(step).__name__
        if kind == "Normalize" and hasattr(step, "mean") and hasattr(step, "std"):
            m2 = [float(v) for v in torch.as_tensor(step.mean).flatten()]
            s2 = [float(v) for v in torch.as_tensor(step.std).flatten()]
            chain.append(f"Normalize(mean={_short(m2)}, std={_short(s2)})")
            if mean is None or std is None:
                mean, std = m2, s2
            else:
                n = max(len(mean), len(m2))
                mean = [_at(mean, i) + _at(m2, i) * _at(std, i) for i in range(n)]
                std = [_at(std, i) * _at(s2, i) for i in range(n)]
        elif kind in ("CenterCrop", "Resize", "RandomResizedCrop"):
            resize.append(f"{kind}({list(getattr(step, 'size', []) or [])})")
        elif kind != "Identity":
            chain.append(kind)
    out: dict[str, Any] = {}
    if mean is None or std is None:
        out["normalization"] = "unknown"
    else:
        out["normalization"] = {
            "mean": mean,
            "std": std,
            "units": "raw input values",  # geosane.data.RAW_UNITS (a sibling floor)
            "torchgeo": " -> ".join(chain),
        }
    if resize:
        out["resize"] = resize
    return out


def _at(values: list[float], i: int) -> float:
    return values[i] if len(values) > 1 else values[0]


def _short(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in values) + "]"
