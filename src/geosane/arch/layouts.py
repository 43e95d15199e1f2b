"""Published geospatial foundation-model checkpoints: one table of layouts, one reason each.

Prithvi, SatMAE, SSL4EO-S12 and the DINOv2 models on the Hub publish checkpoints in the layout of
the code that trained them (MAE encoder + decoder, MoCo query + key encoders and a queue, a DINO
teacher with its projection head, transformers' ``Dinov2Model`` names). :data:`LAYOUTS` holds, per
layout: how to recognise it (Hub repo ids, published file names, a key signature), the
architecture it loads into (an :class:`~geosane.arch.ArchSpec`, sizes read from the checkpoint and
``config.json``), the explicit key remapping, the keys it leaves out (every one listed, never
silently), the input bands and normalisation the published code uses, and the license.

:func:`convert_checkpoint` applies an entry and checks the result strictly against the
architecture: every published tensor is used or listed as left out. Reading files is the zoo's
job (:mod:`geosane.zoo.schemes.geofm`); this module only rewrites objects already read.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import torch

from geosane.arch.keys import key_mismatch
from geosane.arch.meta import empty_architecture
from geosane.arch.spec import ArchSpec
from geosane.errors import SourceError

__all__ = [
    "HLS_BANDS",
    "LAYOUTS",
    "S2_L1C_BANDS",
    "SATMAE_S2_BANDS",
    "CheckpointLayout",
    "Conversion",
    "convert_checkpoint",
    "layout",
    "layout_for_file",
    "layout_for_repo",
    "recognise_layout",
]

HLS_BANDS = ("Blue", "Green", "Red", "Narrow NIR", "SWIR 1", "SWIR 2")  # HLS B02-B07
S2_L1C_BANDS = ("B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12")
FMOW_RGB_BANDS = ("red", "green", "blue")

# Prithvi's pretraining statistics (HLS surface reflectance x 10000): Prithvi-EO-1.0's
# Prithvi_100M_config.yaml, and Prithvi-EO-2.0's config.json (pretrained_cfg mean/std)
PRITHVI_V1_MEAN = (775.2290211032589, 1080.992780391705, 1228.5855250417867,
                   2497.2022620507532, 2204.2139147975554, 1610.8324823273745)  # fmt: skip
PRITHVI_V1_STD = (1281.526139861424, 1270.0297974547493, 1399.4802505642526,
                  1368.3446143747644, 1291.6764008585435, 1154.505683480695)  # fmt: skip
PRITHVI_V2_MEAN = (1087.0, 1342.0, 1433.0, 2734.0, 1958.0, 1363.0)
PRITHVI_V2_STD = (2248.0, 2179.0, 2178.0, 1850.0, 1242.0, 1049.0)
# SatMAE's fMoW-RGB statistics (util/datasets.py CustomDatasetFromImages), after ToTensor (/255)
SATMAE_RGB_MEAN = (0.4182007312774658, 0.4214799106121063, 0.3991275727748871)
SATMAE_RGB_STD = (0.28774282336235046, 0.27541765570640564, 0.2764017581939697)

# MAE decoder tensors: the encoder never uses them
MAE_DECODER_PREFIXES = ("decoder_", "mask_token")


@dataclass
class Conversion:
    """A published checkpoint rewritten for its architecture.

    ``dropped``: published keys left out (decoders, projection heads, key encoders ...), in the
    published names. ``notes``: what was rewritten, one sentence each.
    """

    arch: ArchSpec
    state_dict: dict[str, torch.Tensor]
    dropped: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def in_chans(self) -> int:
        """Input bands of the architecture (``in_chans``, or the bands its groups cover)."""
        groups = self.arch.kwargs.get("channel_groups")
        if isinstance(groups, list):
            return sum(len(g) for g in groups)
        return int(self.arch.kwargs.get("in_chans", 3))


Convert = Callable[[Any, Mapping[str, Any]], Conversion]


@dataclass(frozen=True)
class CheckpointLayout:
    """One published checkpoint layout.

    ``recognise``: the key signature on the checkpoint object as read (nesting included) and the
    repo's ``config.json``. ``convert``: object + config -> :class:`Conversion`. ``repos``: Hub
    repo ids that publish it (regular expressions, whole id, case-insensitive). ``files``: the
    published file names (chosen in a repo that holds several weight files; a file of that name
    is tried with this layout first). ``by_signature``: False where the key signature is shared
    by checkpoints of other origins (an MAE ViT on RGB), so only the repo, the file name or
    ``geofm:LAYOUT:PATH`` pick it. ``normalization``:
    config -> the published normalisation (``mean``/``std`` in ``units``), or ``"unknown"``.
    """

    name: str
    title: str
    family: str
    reference: str
    recognise: Callable[[Any, Mapping[str, Any]], bool]
    convert: Convert
    normalization: Callable[[Mapping[str, Any]], dict[str, Any] | str]
    bands: tuple[str, ...] | None = None
    bands_note: str | None = None
    license: str | None = None
    repos: tuple[str, ...] = ()
    files: tuple[str, ...] = ()
    by_signature: bool = True


# ---------------------------------------------------------------------------------------------
# helpers


def _is_tensor_dict(obj: Any) -> TypeGuard[Mapping[str, torch.Tensor]]:
    return isinstance(obj, Mapping) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _entry(obj: Any, key: str, what: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``obj[key]`` as a state dict, and a note naming the other top-level entries left out."""
    if not isinstance(obj, Mapping) or key not in obj:
        found = ", ".join(f"'{k}'" for k in list(obj)[:5]) if isinstance(obj, Mapping) else type(obj).__name__
        raise SourceError(f"no '{key}' entry ({what}); found {found}")
    inner = obj[key]
    if not _is_tensor_dict(inner):
        raise SourceError(f"the '{key}' entry is not a state dict of tensors")
    notes = [f"loaded the '{key}' entry ({what})"]
    others = [str(k) for k in obj if k != key]
    if others:
        notes.append(f"left out the top-level entries {', '.join(others)} (training state, not weights)")
    return dict(inner), notes


def _flat(obj: Any, what: str) -> dict[str, torch.Tensor]:
    if not _is_tensor_dict(obj):
        raise SourceError(f"the checkpoint is not a flat state dict of tensors ({what})")
    return dict(obj)


def _need(state: Mapping[str, torch.Tensor], key: str, title: str) -> torch.Tensor:
    if key not in state:
        raise SourceError(f"missing '{key}' (the published {title} checkpoint has it)")
    return state[key]


def _split(
    state: Mapping[str, torch.Tensor], drop: Callable[[str], bool]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    kept = {k: v for k, v in state.items() if not drop(k)}
    return kept, [k for k in state if drop(k)]


def _strip(state: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def _count(state: Iterable[str], pattern: str) -> int:
    """How many distinct N a key pattern with one ``(\\d+)`` group matches (blocks, layers)."""
    regex = re.compile(pattern)
    return len({m.group(1) for k in state if (m := regex.match(k))})


def _config_cfg(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The model arguments of a Hub ``config.json`` (TerraTorch puts them under ``pretrained_cfg``)."""
    cfg = config.get("pretrained_cfg")
    return cfg if isinstance(cfg, Mapping) else config


def _stat(values: Any, fallback: tuple[float, ...], count: int) -> list[float]:
    if isinstance(values, list) and len(values) == count and all(isinstance(v, int | float) for v in values):
        return [float(v) for v in values]
    return list(fallback)


# timm ViTs by (width, depth, patch): the published sizes map to these names without overrides
_TIMM_VITS = {
    (384, 12, 16): ("vit_small_patch16_224", 6),
    (768, 12, 16): ("vit_base_patch16_224", 12),
    (1024, 24, 16): ("vit_large_patch16_224", 16),
    (1280, 32, 14): ("vit_huge_patch14_224", 16),
}


def _timm_vit(state: Mapping[str, torch.Tensor], title: str, nominal: str) -> ArchSpec:
    """A timm ViT (class token, learned/fixed absolute positions, qkv bias) sized from ``state``.

    Published sizes give a timm name with only ``img_size``/``in_chans`` set; other sizes keep the
    layout's nominal name and record ``embed_dim``/``depth``/``num_heads`` (64 channels per head,
    as in every ViT size timm and these repos define) and ``mlp_ratio`` explicitly.
    """
    proj = _need(state, "patch_embed.proj.weight", title)
    pos = _need(state, "pos_embed", title)
    width, in_chans, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[-1])
    depth = _count(state, r"blocks\.(\d+)\.")
    side = round((int(pos.shape[1]) - 1) ** 0.5)
    kwargs: dict[str, Any] = {"num_classes": 0, "img_size": side * patch, "in_chans": in_chans}
    hidden = int(_need(state, "blocks.0.mlp.fc1.weight", title).shape[0])
    known = _TIMM_VITS.get((width, depth, patch))
    if known is not None and hidden == 4 * width:
        name = known[0]
    else:
        name = nominal
        kwargs.update(embed_dim=width, depth=depth, num_heads=max(width // 64, 1), mlp_ratio=hidden / width,
                      patch_size=patch)  # fmt: skip
    return ArchSpec("timm", name, kwargs)


# ---------------------------------------------------------------------------------------------
# Prithvi (IBM/NASA)


_PRITHVI_HEADS = {256: 4, 768: 12, 1024: 16, 1280: 16}  # tiny, 100M, 300M, 600M (TerraTorch's configs)


def _prithvi_arch(
    state: Mapping[str, torch.Tensor], config: Mapping[str, Any], frames: int, title: str
) -> tuple[ArchSpec, list[str]]:
    """PrithviViT sized from the checkpoint; frames and image size from config.json (else the
    published defaults), checked against the stored position embedding."""
    cfg = _config_cfg(config)
    notes: list[str] = []
    proj = _need(state, "patch_embed.proj.weight", title)
    if proj.ndim != 5:
        raise SourceError(
            f"'patch_embed.proj.weight' has shape {tuple(proj.shape)}; Prithvi's tubelet embedding is a Conv3d [D, C, t, h, w]"
        )
    width, in_chans = int(proj.shape[0]), int(proj.shape[1])
    patch = [int(s) for s in proj.shape[2:]]
    depth = _count(state, r"blocks\.(\d+)\.")
    heads = cfg.get("num_heads") if isinstance(cfg.get("num_heads"), int) else _PRITHVI_HEADS.get(width)
    if heads is None:
        heads = max(width // 64, 1)
        notes.append(
            f"num_heads is not in the checkpoint nor config.json: {heads} assumed (64 channels per head)"
        )
    img_size = int(cfg.get("img_size") or 224)
    per_slice = (img_size // patch[1]) * (img_size // patch[2])
    positions = int(_need(state, "pos_embed", title).shape[1]) - 1
    if per_slice == 0 or positions % per_slice:
        raise SourceError(
            f"'pos_embed' holds {positions} patch positions, not a whole number of {img_size} px frames in "
            f"{patch} tubelets ({per_slice} each); put img_size in config.json"
        )
    num_frames = positions // per_slice * patch[0]  # the grid the stored position embedding is laid out for
    wanted = cfg.get("num_frames")
    if isinstance(wanted, int) and wanted != num_frames:
        notes.append(
            f"config.json says num_frames={wanted}; the stored pos_embed is laid out for {num_frames}, used"
        )
    elif not isinstance(wanted, int) and num_frames != frames:
        notes.append(f"{num_frames} frames (from pos_embed; the published default is {frames})")
    pos = state["pos_embed"]
    hidden = int(_need(state, "blocks.0.mlp.fc1.weight", title).shape[0])
    coords = [
        c
        for c, key in (("time", "temporal_embed_enc.scale"), ("location", "location_embed_enc.scale"))
        if key in state
    ]
    kwargs: dict[str, Any] = {
        "img_size": img_size, "patch_size": patch, "num_frames": num_frames, "in_chans": in_chans,
        "embed_dim": width, "depth": depth, "num_heads": int(heads), "mlp_ratio": hidden / width,
        "coords_encoding": coords, "coords_scale_learn": bool(cfg.get("coords_scale_learn", bool(coords))),
        "num_classes": 0,
    }  # fmt: skip
    notes.append(
        _sincos_note(pos, width, (num_frames // patch[0], img_size // patch[1], img_size // patch[2]))
    )
    return ArchSpec("geosane", "prithvi_vit", kwargs), notes


def _sincos_note(pos: torch.Tensor, width: int, grid: tuple[int, int, int]) -> str:
    """Whether the stored position embedding is Prithvi's fixed 3D sin-cos (then other frame
    counts and image sizes get exactly what Prithvi computes for them)."""
    from geosane.arch.prithvi import sincos_3d

    if pos.device.type == "meta":
        return "pos_embed not compared with the 3D sin-cos formula (no values)"
    diff = float((pos.float() - sincos_3d(width, grid)).abs().max())
    if diff <= 1e-4:
        return (
            f"pos_embed is the fixed 3D sin-cos embedding (max |diff| {diff:.1g}); other grids recompute it"
        )
    return (
        f"pos_embed differs from the 3D sin-cos formula (max |diff| {diff:.3g}): used as stored for "
        f"{grid[0]} frames of {grid[1]}x{grid[2]} patches; other grids use the formula"
    )


def _prithvi_v1(obj: Any, config: Mapping[str, Any]) -> Conversion:
    """Prithvi-EO-1.0: a flat MAE state dict (encoder keys at the top, ``decoder_*``, ``mask_token``)."""
    title = "Prithvi-EO-1.0"
    state, dropped = _split(_flat(obj, title), lambda k: k.startswith(MAE_DECODER_PREFIXES))
    arch, notes = _prithvi_arch(state, config, frames=3, title=title)
    notes.append(f"left out the MAE decoder ({len(dropped)} tensors: decoder_*, mask_token)")
    return Conversion(arch, state, dropped, notes)


def _prithvi_v2(obj: Any, config: Mapping[str, Any]) -> Conversion:
    """Prithvi-EO-2.0 (TerraTorch's PrithviMAE): ``encoder.*`` and ``decoder.*``."""
    title = "Prithvi-EO-2.0"
    flat = _flat(obj, title)
    encoder, dropped = _split(flat, lambda k: not k.startswith("encoder."))
    state = _strip(encoder, "encoder.")
    arch, notes = _prithvi_arch(state, config, frames=4, title=title)
    notes.insert(0, "took the 'encoder.' tensors, without the prefix (TerraTorch's PrithviViT keys)")
    notes.append(f"left out the MAE decoder ({len(dropped)} tensors: decoder.*)")
    return Conversion(arch, state, dropped, notes)


def _prithvi_norm(
    mean: tuple[float, ...], std: tuple[float, ...], source: str
) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    def normalization(config: Mapping[str, Any]) -> dict[str, Any]:
        cfg = _config_cfg(config)
        from_config = isinstance(cfg.get("mean"), list) and isinstance(cfg.get("std"), list)
        return {
            "mean": _stat(cfg.get("mean"), mean, len(mean)),
            "std": _stat(cfg.get("std"), std, len(std)),
            "units": "HLS surface reflectance x 10000 (as stored in HLS files)",
            "published": "config.json pretrained_cfg mean/std" if from_config else source,
        }

    return normalization


def _is_prithvi_v1(obj: Any, config: Mapping[str, Any]) -> bool:
    """A flat MAE whose patch embedding is a Conv3d over the 6 HLS bands."""
    w = obj.get("patch_embed.proj.weight") if _is_tensor_dict(obj) else None
    return isinstance(w, torch.Tensor) and w.ndim == 5 and int(w.shape[1]) == len(HLS_BANDS)


def _is_prithvi_v2(obj: Any, config: Mapping[str, Any]) -> bool:
    w = obj.get("encoder.patch_embed.proj.weight") if _is_tensor_dict(obj) else None
    return isinstance(w, torch.Tensor) and w.ndim == 5 and int(w.shape[1]) == len(HLS_BANDS)


# ---------------------------------------------------------------------------------------------
# MAE-style ViTs (SatMAE fMoW-RGB, SSL4EO-S12 MAE)


def _mae(title: str, nominal: str) -> Convert:
    def convert(obj: Any, config: Mapping[str, Any]) -> Conversion:
        model, notes = _entry(obj, "model", "MAE's save_model: encoder + decoder")
        state, dropped = _split(model, lambda k: k.startswith(MAE_DECODER_PREFIXES))
        notes.append(f"left out the MAE decoder ({len(dropped)} tensors: decoder_*, mask_token)")
        return Conversion(_timm_vit(state, title, nominal), state, dropped, notes)

    return convert


def _mae_bands(obj: Any) -> int | None:
    model = obj.get("model") if isinstance(obj, Mapping) else None
    if not _is_tensor_dict(model) or "decoder_pred.weight" not in model:
        return None
    w = model.get("patch_embed.proj.weight")
    return int(w.shape[1]) if isinstance(w, torch.Tensor) and w.ndim == 4 else None


def _is_group_channel_mae(obj: Any, config: Mapping[str, Any]) -> bool:
    model = obj.get("model") if isinstance(obj, Mapping) else None
    return _is_tensor_dict(model) and "channel_embed" in model and "patch_embed.0.proj.weight" in model


# ---------------------------------------------------------------------------------------------
# SSL4EO-S12 MoCo ResNet-50 and DINO ViT-S/16


_MOCO_Q = "module.encoder_q."


def _moco_rn50(obj: Any, config: Mapping[str, Any]) -> Conversion:
    """MoCo v2 (the repo's builder.MoCo in DDP): query encoder kept; its projection MLP, the
    key encoder and the queue left out (as the repo's linear_BE_moco.py loads it)."""
    raw, notes = _entry(obj, "state_dict", "MoCo's training checkpoint")

    def keep(key: str) -> bool:
        return key.startswith(_MOCO_Q) and not key.startswith(_MOCO_Q + "fc.")

    state = {k[len(_MOCO_Q) :]: v for k, v in raw.items() if keep(k)}
    dropped = [k for k in raw if not keep(k)]
    title = "SSL4EO-S12 MoCo ResNet-50"
    conv1 = _need(state, "conv1.weight", title)
    layers = [_count(state, rf"layer{i}\.(\d+)\.") for i in range(1, 5)]
    if "layer1.0.conv3.weight" not in state:
        raise SourceError(
            "missing 'module.encoder_q.layer1.0.conv3.weight' (a ResNet-50 has bottleneck blocks)"
        )
    kwargs: dict[str, Any] = {"num_classes": 0, "in_chans": int(conv1.shape[1])}
    if layers != [3, 4, 6, 3]:
        kwargs["layers"] = layers
    notes.append(
        f"took the query encoder ('{_MOCO_Q}*'); left out its projection MLP ('{_MOCO_Q}fc.*'), "
        f"the key encoder ('module.encoder_k.*') and the queue ({len(dropped)} tensors)"
    )
    return Conversion(ArchSpec("timm", "resnet50", kwargs), state, dropped, notes)


def _dino_vits16(obj: Any, config: Mapping[str, Any]) -> Conversion:
    """DINO: the teacher (the repo's checkpoint_key default) as MultiCropWrapper(backbone, head)."""
    teacher, notes = _entry(obj, "teacher", "DINO's training checkpoint; the repo evaluates the teacher")
    prefix = next(
        (p for p in ("module.backbone.", "backbone.") if any(k.startswith(p) for k in teacher)), None
    )
    if prefix is None:
        raise SourceError(
            "missing 'backbone.*' in the 'teacher' entry (DINO's MultiCropWrapper(backbone, head))"
        )
    state = {k[len(prefix) :]: v for k, v in teacher.items() if k.startswith(prefix)}
    dropped = [k for k in teacher if not k.startswith(prefix)]
    notes.append(
        f"took the teacher's '{prefix}*'; left out the DINO projection head ({len(dropped)} tensors: head.*)"
    )
    return Conversion(
        _timm_vit(state, "SSL4EO-S12 DINO ViT-S/16", "vit_small_patch16_224"), state, dropped, notes
    )


def _is_moco(obj: Any, config: Mapping[str, Any]) -> bool:
    inner = obj.get("state_dict") if isinstance(obj, Mapping) else None
    w = inner.get(_MOCO_Q + "conv1.weight") if _is_tensor_dict(inner) else None
    return isinstance(w, torch.Tensor) and int(w.shape[1]) == len(S2_L1C_BANDS)


def _is_dino(obj: Any, config: Mapping[str, Any]) -> bool:
    teacher = obj.get("teacher") if isinstance(obj, Mapping) else None
    if not _is_tensor_dict(teacher):
        return False
    w = teacher.get(
        "backbone.patch_embed.proj.weight", teacher.get("module.backbone.patch_embed.proj.weight")
    )
    return isinstance(w, torch.Tensor) and int(w.shape[1]) == len(S2_L1C_BANDS)


def _ssl4eo_norm(config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "mean": [0.0] * len(S2_L1C_BANDS),
        "std": [10000.0] * len(S2_L1C_BANDS),
        "units": "Sentinel-2 L1C digital numbers (DN)",
        "published": (
            "pretraining input is DN / 10000 * 255 cast to uint8 (the repo's uint8 LMDB, dtype=uint8; "
            "values over 10000 DN are not clipped first), then ToTensor's / 255: DN / 10000 in 8-bit steps"
        ),
    }


# ---------------------------------------------------------------------------------------------
# DINOv2 in transformers' Dinov2Model layout


_HF_LAYER = re.compile(r"encoder\.layer\.(\d+)\.(.+)")
_HF_RENAMES = {
    "norm1.weight": "norm1.weight", "norm1.bias": "norm1.bias",
    "norm2.weight": "norm2.weight", "norm2.bias": "norm2.bias",
    "attention.output.dense.weight": "attn.proj.weight", "attention.output.dense.bias": "attn.proj.bias",
    "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma",
    "mlp.fc1.weight": "mlp.fc1.weight", "mlp.fc1.bias": "mlp.fc1.bias",
    "mlp.fc2.weight": "mlp.fc2.weight", "mlp.fc2.bias": "mlp.fc2.bias",
}  # fmt: skip
_HF_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "embeddings.register_tokens": "reg_token",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
_DINOV2_NAMES = {
    384: "vit_small_patch14_dinov2",
    768: "vit_base_patch14_dinov2",
    1024: "vit_large_patch14_dinov2",
}


def _hf_dinov2(obj: Any, config: Mapping[str, Any]) -> Conversion:
    """transformers' Dinov2Model keys onto timm's ``vit_*_patch14_dinov2``: query/key/value
    concatenated into ``qkv``, ``layer_scale*.lambda1`` -> ``ls*.gamma``, ``layernorm`` -> ``norm``;
    with registers, the class token's position folded into ``cls_token`` (as timm converts DINOv2)."""
    title = "transformers Dinov2Model"
    raw = _flat(obj, title)
    notes: list[str] = []
    dropped: list[str] = []
    if any(k.startswith("dinov2.") for k in raw):  # Dinov2ForImageClassification: backbone + classifier
        dropped = [k for k in raw if not k.startswith("dinov2.")]
        raw = {k.removeprefix("dinov2."): v for k, v in raw.items() if k.startswith("dinov2.")}
        notes.append(f"took the 'dinov2.' backbone; left out the classifier ({len(dropped)} tensors)")
    if any(".mlp.weights_in." in k for k in raw) or config.get("use_swiglu_ffn"):
        raise SourceError(
            "DINOv2 with a SwiGLU MLP (ViT-g, 'mlp.weights_in') is not mapped onto timm here: its packed "
            "hidden width differs between transformers and timm"
        )
    out: dict[str, torch.Tensor] = {}
    unmatched: dict[str, torch.Tensor] = {}
    qkv: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in raw.items():
        if key in _HF_TOP:
            out[_HF_TOP[key]] = value
        elif key == "embeddings.mask_token":
            dropped.append(key)
            notes.append(
                "left out 'embeddings.mask_token' (DINOv2's masking token, unused by the encoder; timm drops it too)"
            )
        elif key == "embeddings.position_embeddings":
            out["pos_embed"] = value
        elif (m := _HF_LAYER.match(key)) is not None:
            index, rest = int(m.group(1)), m.group(2)
            part = re.fullmatch(r"attention\.attention\.(query|key|value)\.(weight|bias)", rest)
            if part is not None:
                qkv.setdefault(index, {})[f"{part.group(1)}.{part.group(2)}"] = value
            elif rest in _HF_RENAMES:
                out[f"blocks.{index}.{_HF_RENAMES[rest]}"] = value
            else:
                unmatched[key] = value
        else:
            unmatched[key] = value
    for index, parts in sorted(qkv.items()):
        for kind in ("weight", "bias"):
            names = [f"{p}.{kind}" for p in ("query", "key", "value")]
            absent = [n for n in names if n not in parts]
            if absent:
                raise SourceError(f"missing 'encoder.layer.{index}.attention.attention.{absent[0]}'")
            out[f"blocks.{index}.attn.qkv.{kind}"] = torch.cat([parts[n] for n in names], dim=0)
    out.update(unmatched)  # reported by the strict key check
    notes.append(
        "query/key/value concatenated into attn.qkv; layer_scale*.lambda1 -> ls*.gamma; layernorm -> norm"
    )
    proj = _need(out, "patch_embed.proj.weight", title)
    pos = _need(out, "pos_embed", title)
    width, in_chans, patch = int(proj.shape[0]), int(proj.shape[1]), int(proj.shape[-1])
    depth = _count(out, r"blocks\.(\d+)\.")
    registers = int(out["reg_token"].shape[1]) if "reg_token" in out else 0
    side = round((int(pos.shape[1]) - 1) ** 0.5)
    if registers:  # timm's no_embed_class layout: the class position is added to the token once
        out["cls_token"] = _need(out, "cls_token", title) + pos[:, :1]
        out["pos_embed"] = pos[:, 1:]
        notes.append(
            "register tokens -> reg_token; the class token's position added to cls_token (timm's no_embed_class)"
        )
    heads = config.get("num_attention_heads")
    hidden = int(_need(out, "blocks.0.mlp.fc1.weight", title).shape[0])
    kwargs: dict[str, Any] = {
        "num_classes": 0,
        "img_size": int(config.get("image_size") or side * patch),
        "in_chans": int(config.get("num_channels") or in_chans),
        "patch_size": int(config.get("patch_size") or patch),
        "embed_dim": int(config.get("hidden_size") or width),
        "depth": int(config.get("num_hidden_layers") or depth),
        "num_heads": int(heads) if isinstance(heads, int) else max(width // 64, 1),
        "mlp_ratio": hidden / width,
        "dynamic_img_size": True,  # transformers' Dinov2Model interpolates positions for any input size
    }
    if isinstance(config.get("layer_norm_eps"), float) and config["layer_norm_eps"] != 1e-6:
        notes.append(f"config.json layer_norm_eps {config['layer_norm_eps']} differs from timm's 1e-6")
    base = _DINOV2_NAMES.get(width, "vit_base_patch14_dinov2")
    if registers:
        base = base.replace("_dinov2", "_reg4_dinov2")
        kwargs["reg_tokens"] = registers
    return Conversion(ArchSpec("timm", base, kwargs), out, dropped, notes)


def _is_hf_dinov2(obj: Any, config: Mapping[str, Any]) -> bool:
    if config.get("model_type") in ("dinov2", "dinov2_with_registers"):
        return True
    if not _is_tensor_dict(obj):
        return False
    return any(k.removeprefix("dinov2.") == "embeddings.patch_embeddings.projection.weight" for k in obj)


def _hf_dinov2_norm(config: Mapping[str, Any]) -> dict[str, Any] | str:
    """From preprocessor_config.json (merged into ``config`` as ``preprocessor``), else unknown."""
    pre = config.get("preprocessor")
    if not isinstance(pre, Mapping) or not isinstance(pre.get("image_mean"), list):
        return "unknown"
    rescale = pre.get("rescale_factor") if pre.get("do_rescale", True) else None
    units = f"pixel values x {rescale:g}" if isinstance(rescale, int | float) else "pixel values"
    return {
        "mean": [float(v) for v in pre["image_mean"]],
        "std": [float(v) for v in pre.get("image_std") or []],
        "units": units,
        "published": "preprocessor_config.json image_mean/image_std",
    }


# SatMAE fMoW-Sentinel: 13 L1C-order bands, B01, B09, B10 dropped (--dropped_bands 0 9 10)
SATMAE_S2_BANDS = ("B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B11", "B12")
_SATMAE_KEPT = (1, 2, 3, 4, 5, 6, 7, 8, 11, 12)
# util/datasets.py SentinelIndividualImageDataset.mean/std (13 bands, B01 ... B12 with B8A)
SATMAE_S2_MEAN = (1370.19151926, 1184.3824625, 1120.77120066, 1136.26026392, 1263.73947144, 1645.40315151,
                  1846.87040806, 1762.59530783, 1972.62420416, 582.72633433, 14.77112979, 1732.16362238,
                  1247.91870117)  # fmt: skip
SATMAE_S2_STD = (633.15169573, 650.2842772, 712.12507725, 965.23119807, 948.9819932, 1108.06650639,
                 1258.36394548, 1233.1492281, 1364.38688993, 472.37967789, 14.3114637, 1310.36996126,
                 1087.6020813)  # fmt: skip


def _satmae_group(obj: Any, config: Mapping[str, Any]) -> Conversion:
    """SatMAE's MaskedAutoencoderGroupChannelViT: per-group ``patch_embed.N``, ``channel_embed``."""
    from geosane.arch.satmae import SATMAE_GROUPS

    title = "SatMAE group-channel"
    model, notes = _entry(obj, "model", "MAE's save_model: encoder + decoder")
    state, dropped = _split(model, lambda k: k.startswith(MAE_DECODER_PREFIXES))
    notes.append(f"left out the MAE decoder ({len(dropped)} tensors: decoder_*, decoder_pred.N, mask_token)")
    width = int(_need(state, "cls_token", title).shape[-1])
    chan = _need(state, "channel_embed", title)
    groups = int(chan.shape[1])
    sizes = [int(_need(state, f"patch_embed.{i}.proj.weight", title).shape[1]) for i in range(groups)]
    published = [len(g) for g in SATMAE_GROUPS]
    if sizes != published:
        raise SourceError(
            f"band groups of sizes {sizes}; SatMAE's published grouping {[list(g) for g in SATMAE_GROUPS]} "
            f"has sizes {published} (the indices are not in the checkpoint)"
        )
    proj = state["patch_embed.0.proj.weight"]
    patch = int(proj.shape[-1])
    side = round((int(_need(state, "pos_embed", title).shape[1]) - 1) ** 0.5)
    hidden = int(_need(state, "blocks.0.mlp.fc1.weight", title).shape[0])
    kwargs: dict[str, Any] = {
        "img_size": side * patch, "patch_size": patch, "channel_groups": [list(g) for g in SATMAE_GROUPS],
        "embed_dim": width, "channel_embed": int(chan.shape[-1]), "depth": _count(state, r"blocks\.(\d+)\."),
        "num_heads": max(width // 64, 1), "mlp_ratio": hidden / width, "num_classes": 0,
    }  # fmt: skip
    notes.append(
        f"band groups {kwargs['channel_groups']} (SatMAE's published --grouped_bands; sizes {sizes} checked)"
    )
    return Conversion(ArchSpec("geosane", "satmae_group_vit", kwargs), state, dropped, notes)


def _satmae_group_norm(config: Mapping[str, Any]) -> dict[str, Any]:
    mean = [SATMAE_S2_MEAN[i] - 2 * SATMAE_S2_STD[i] for i in _SATMAE_KEPT]
    std = [4 * SATMAE_S2_STD[i] for i in _SATMAE_KEPT]
    return {
        "mean": mean,
        "std": std,
        "units": "Sentinel-2 L1C digital numbers (DN)",
        "published": (
            "SentinelNormalize: (DN - (mean - 2 std)) / (4 std) * 255 clipped to 0-255 as uint8, then ToTensor's "
            "/ 255 (util/datasets.py, the 13-band statistics, B01/B09/B10 dropped after)"
        ),
    }


# ---------------------------------------------------------------------------------------------
# the table


LAYOUTS: dict[str, CheckpointLayout] = {
    "prithvi-eo-1": CheckpointLayout(
        name="prithvi-eo-1",
        title="Prithvi-EO-1.0-100M (IBM/NASA, HLS, 3 frames)",
        family="prithvi",
        reference="NASA-IMPACT/hls-foundation-os; TerraTorch prithvi_vit.py",
        recognise=_is_prithvi_v1,
        convert=_prithvi_v1,
        normalization=_prithvi_norm(
            PRITHVI_V1_MEAN, PRITHVI_V1_STD, "Prithvi_100M_config.yaml data_mean/data_std"
        ),
        bands=HLS_BANDS,
        license="apache-2.0",
        repos=(r"ibm-nasa-geospatial/Prithvi-EO-1\.0-100M", r"ibm-nasa-geospatial/Prithvi-100M"),
        files=("Prithvi_EO_V1_100M.pt", "Prithvi_100M.pt"),
    ),
    "prithvi-eo-2": CheckpointLayout(
        name="prithvi-eo-2",
        title="Prithvi-EO-2.0 (IBM/NASA, HLS, 4 frames; TerraTorch PrithviMAE, optional time/location)",
        family="prithvi",
        reference="IBM/terratorch terratorch/models/backbones/prithvi_mae.py",
        recognise=_is_prithvi_v2,
        convert=_prithvi_v2,
        normalization=_prithvi_norm(PRITHVI_V2_MEAN, PRITHVI_V2_STD, "TerraTorch PRITHVI_V2_MEAN/STD"),
        bands=HLS_BANDS,
        license="apache-2.0",
        repos=(r"ibm-nasa-geospatial/Prithvi-EO-2\.0-[\w.-]+",),
        files=(
            "Prithvi_EO_V2_300M.pt",
            "Prithvi_EO_V2_300M_TL.pt",
            "Prithvi_EO_V2_600M.pt",
            "Prithvi_EO_V2_600M_TL.pt",
            "Prithvi_EO_V2_100M_TL.pt",
            "Prithvi_EO_V2_tiny_TL.pt",
        ),
    ),
    "satmae-fmow-rgb": CheckpointLayout(
        name="satmae-fmow-rgb",
        title="SatMAE fMoW-RGB (MAE ViT-L/16 pretraining checkpoint)",
        family="vit",
        reference="sustainlab-group/SatMAE models_mae.py, util/datasets.py",
        recognise=lambda obj, config: _mae_bands(obj) == 3,
        convert=_mae("SatMAE fMoW-RGB", "vit_large_patch16_224"),
        normalization=lambda config: {
            "mean": list(SATMAE_RGB_MEAN),
            "std": list(SATMAE_RGB_STD),
            "units": "RGB / 255 (ToTensor)",
            "published": "util/datasets.py CustomDatasetFromImages mean/std",
        },
        bands=FMOW_RGB_BANDS,
        license="cc-by-nc-4.0",
        files=("fmow_pretrain.pth",),
        by_signature=False,  # any RGB MAE with its decoder (e.g. facebookresearch/mae's) looks the same
    ),
    "satmae-group-channels": CheckpointLayout(
        name="satmae-group-channels",
        title="SatMAE fMoW-Sentinel group-channel MAE ViT (10 bands in 3 groups)",
        family="satmae",
        reference="sustainlab-group/SatMAE models_mae_group_channels.py, models_vit_group_channels.py",
        recognise=_is_group_channel_mae,
        convert=_satmae_group,
        normalization=_satmae_group_norm,
        bands=SATMAE_S2_BANDS,
        license="cc-by-nc-4.0",
        files=("pretrain-vit-base-e199.pth", "pretrain-vit-large-e199.pth"),
    ),
    "ssl4eo-moco-rn50": CheckpointLayout(
        name="ssl4eo-moco-rn50",
        title="SSL4EO-S12 MoCo-v2 ResNet-50 (Sentinel-2 L1C, 13 bands)",
        family="resnet",
        reference="zhu-xlab/SSL4EO-S12 pretrain_moco_v2_s2c.py, linear_BE_moco.py",
        recognise=_is_moco,
        convert=_moco_rn50,
        normalization=_ssl4eo_norm,
        bands=S2_L1C_BANDS,
        license="cc-by-4.0",
        repos=(r"wangyi111/SSL4EO-S12",),
        files=("B13_rn50_moco_0099_ckpt.pth",),
    ),
    "ssl4eo-dino-vits16": CheckpointLayout(
        name="ssl4eo-dino-vits16",
        title="SSL4EO-S12 DINO ViT-S/16 (Sentinel-2 L1C, 13 bands)",
        family="vit",
        reference="zhu-xlab/SSL4EO-S12 pretrain_dino_s2c.py, models/dino",
        recognise=_is_dino,
        convert=_dino_vits16,
        normalization=_ssl4eo_norm,
        bands=S2_L1C_BANDS,
        license="cc-by-4.0",
        repos=(r"wangyi111/SSL4EO-S12",),
        files=("B13_vits16_dino_0099_ckpt.pth",),
    ),
    "ssl4eo-mae-vits16": CheckpointLayout(
        name="ssl4eo-mae-vits16",
        title="SSL4EO-S12 MAE ViT (S/16 and the B/L sizes; Sentinel-2 L1C, 13 bands)",
        family="vit",
        reference="zhu-xlab/SSL4EO-S12 pretrain_mae_s2c.py, models/mae/models_mae.py",
        recognise=lambda obj, config: _mae_bands(obj) == len(S2_L1C_BANDS),
        convert=_mae("SSL4EO-S12 MAE ViT", "vit_small_patch16_224"),
        normalization=_ssl4eo_norm,
        bands=S2_L1C_BANDS,
        license="cc-by-4.0",
        repos=(r"wangyi111/SSL4EO-S12",),
        files=("B13_vits16_mae_0099_ckpt.pth",),
    ),
    "hf-dinov2": CheckpointLayout(
        name="hf-dinov2",
        title="DINOv2 in transformers' Dinov2Model layout (config.json model_type dinov2)",
        family="vit",
        reference="huggingface/transformers convert_dinov2_to_hf.py; timm vision_transformer._convert_dinov2",
        recognise=_is_hf_dinov2,
        convert=_hf_dinov2,
        normalization=_hf_dinov2_norm,
        bands_note="not named by the checkpoint (config.json num_channels gives the count)",
    ),
}


def layout(name: str) -> CheckpointLayout:
    """The layout called ``name`` (an error lists the known ones)."""
    try:
        return LAYOUTS[name]
    except KeyError:
        raise SourceError(f"unknown checkpoint layout '{name}' (known: {', '.join(LAYOUTS)})") from None


def layout_for_repo(repo_id: str, filename: str | None = None) -> list[CheckpointLayout]:
    """Layouts a Hub repo publishes (by repo id; narrowed to ``filename`` when it is a published name)."""
    found = [e for e in LAYOUTS.values() if any(re.fullmatch(p, repo_id, re.IGNORECASE) for p in e.repos)]
    if filename is not None:
        named = [e for e in found if filename in e.files]
        return named or found
    return found


def layout_for_file(filename: str) -> list[CheckpointLayout]:
    """Layouts that publish a file called ``filename``."""
    return [e for e in LAYOUTS.values() if filename in e.files]


def recognise_layout(obj: Any, config: Mapping[str, Any]) -> CheckpointLayout | None:
    """The layout whose key signature ``obj`` (as read, nesting included) has, or None."""
    for entry in LAYOUTS.values():
        if entry.by_signature and entry.recognise(obj, config):
            return entry
    return None


def expected_bands(entry: CheckpointLayout) -> str:
    """``6 bands (Blue, Green, ...)`` for messages."""
    if entry.bands is None:
        return "bands the checkpoint does not name"
    return f"{len(entry.bands)} bands ({', '.join(entry.bands)})"


def convert_checkpoint(
    entry: CheckpointLayout, obj: Any, config: Mapping[str, Any] | None = None
) -> Conversion:
    """Rewrite ``obj`` by ``entry`` and check it strictly against the architecture.

    Every tensor left must be a tensor of the architecture with its shape, and every tensor of the
    architecture must be there; else one line naming the first missing and the first unexpected key.
    The band count of the stem must be the layout's.
    """
    conversion = entry.convert(obj, dict(config or {}))
    arch = conversion.arch
    if entry.bands is not None:
        in_chans = conversion.in_chans
        if in_chans != len(entry.bands):
            raise SourceError(
                f"the checkpoint's stem takes {in_chans} bands, but {entry.title} expects {expected_bands(entry)}"
            )
    fresh = empty_architecture(arch).state_dict()
    problem = key_mismatch(fresh, conversion.state_dict)
    if problem:
        raise SourceError(f"weights do not fit {arch.library}:{arch.name} {arch.kwargs}: {problem}")
    conversion.state_dict = {k: conversion.state_dict[k] for k in fresh}  # the architecture's order
    return conversion
