"""Backbones to analyse: any model source, plus an architecture record where the source lacks one.

A model is named in a config by :class:`ModelSpec`. Its ``source`` goes through
:func:`geosane.zoo.resolve` (timm, Hub, local checkpoints, ``zoo:DIR#ID``, ...). Weights files without
an architecture (a ``geosane generate`` candidate, a bare safetensors file) get one from ``arch``:
an ArchSpec mapping ``{library, name, kwargs}`` or a JSON file holding one (directly or under an
``"arch"`` key, as ``model_card.json`` does); a ``model_card.json`` next to the weights file is
used automatically. ``random_init`` with an ``arch`` mapping builds that architecture with fresh
(seeded) weights, e.g. a ViT at another image size as a baseline.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geosane.analysis.layers import Pooling
from geosane.analysis.temporal import temporal_frames
from geosane.data import Normalization, recorded_normalization
from geosane.errors import SourceError
from geosane.io import read_json, sha256_tensors
from geosane.tasks import backbone_with_weights
from geosane.zoo import ArchSpec, LoadedModel, build_architecture, load_zoo_source, resolve

__all__ = ["Backbone", "ModelSpec", "attach_normalization", "expected_bands", "input_check", "load_backbone"]

MODEL_CARD = "model_card.json"


@dataclass
class ModelSpec:
    """One model to analyse (an entry of ``models:`` in a probe config, ``model_a``/``model_b`` in CKA)."""

    source: str
    name: str | None = None
    arch: dict[str, Any] | str | None = None
    random_init: bool = False
    in_chans: int | None = None
    layers: list[str] | None = None
    pooling: Pooling | None = None


@dataclass
class Backbone:
    """A built, eval-mode model with its display name and a content key for feature caching."""

    name: str
    model: nn.Module
    loaded: LoadedModel
    key: str
    spec: ModelSpec = field(repr=False)
    # the normalisation this model's inputs get (attach_normalization); None: the data's own
    normalization: Normalization | None = None

    def inputs(self, data_normalization: Normalization) -> Normalization:
        """The normalisation to apply to raw images before this model sees them."""
        return self.normalization or data_normalization


def _arch_from_json(path: Path, what: str) -> ArchSpec:
    try:
        data = read_json(path)
    except (OSError, json.JSONDecodeError) as exc:
        raise SourceError(f"{what}: cannot read architecture record {path}: {exc}") from None
    record = data.get("arch", data) if isinstance(data, dict) else None
    if not isinstance(record, dict) or not {"library", "name"} <= record.keys():
        raise SourceError(
            f"{what}: {path} holds no ArchSpec ({{library, name, kwargs}}, or one under 'arch')"
        )
    return ArchSpec.from_dict(record)


def _arch_for(spec: ModelSpec, loaded: LoadedModel) -> ArchSpec | None:
    if isinstance(spec.arch, dict):
        if not {"library", "name"} <= spec.arch.keys():
            raise SourceError(f"{spec.source}: 'arch' needs 'library' and 'name' (and optional 'kwargs')")
        return ArchSpec.from_dict(spec.arch)
    if isinstance(spec.arch, str):
        return _arch_from_json(Path(spec.arch).expanduser(), spec.source)
    if loaded.arch is not None:
        return loaded.arch
    card = Path(spec.source).expanduser().parent / MODEL_CARD
    if card.is_file():
        return _arch_from_json(card, spec.source)
    return None


def _display_name(spec: ModelSpec, loaded: LoadedModel) -> str:
    if spec.name:
        return spec.name
    if "zoo_id" in loaded.info:
        return str(loaded.info["zoo_id"])
    source = spec.source
    if ":" in source and not Path(source).expanduser().exists():
        return source.split("#")[-1].split(":", 1)[-1].split("/")[-1]
    return Path(source).stem


def _resolve(spec: ModelSpec) -> LoadedModel:
    """The source's weights; with ``random_init`` and an explicit ``arch``, fresh weights of that arch."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # random-init weights are reproducible, so their cached features are reused
        if spec.random_init and isinstance(spec.arch, dict):
            arch = _arch_for(spec, LoadedModel(spec.source, {}))
            assert arch is not None
            model = build_architecture(arch)
            return LoadedModel(
                f"{spec.source} (random init)", dict(model.state_dict()), arch, {"pretrained": False}
            )
        try:
            return resolve(spec.source, random_init=spec.random_init, in_chans=spec.in_chans)
        except SourceError:
            if not spec.source.startswith("zoo:"):
                raise
            return _load_from_zoo(spec.source)


def _load_from_zoo(source: str) -> LoadedModel:
    """``zoo:DIR#ID`` through :class:`geosane.zoo.Zoo` when ``resolve`` has no ``zoo:`` scheme."""
    return load_zoo_source(source)


def load_backbone(spec: ModelSpec) -> Backbone:
    """Resolve, build and fingerprint the model of ``spec`` (eval mode, on CPU)."""
    loaded = _resolve(spec)
    arch = _arch_for(spec, loaded)
    if arch is None:
        raise SourceError(
            f"{spec.source}: no architecture record, so the weights cannot be built into a model; give "
            f"'arch' (an ArchSpec {{library, name, kwargs}} or a JSON file such as {MODEL_CARD})"
        )
    loaded = LoadedModel(loaded.source, loaded.state_dict, arch, loaded.info)
    model = backbone_with_weights(loaded, in_chans=spec.in_chans).eval()
    digest = hashlib.sha256()
    # key order differs between sources of the same weights (safetensors sorts, the zoo keeps it)
    digest.update(sha256_tensors(dict(sorted(loaded.state_dict.items()))).encode())
    digest.update(json.dumps(arch.to_dict(), sort_keys=True, default=str).encode())
    digest.update(str(spec.in_chans).encode())
    return Backbone(_display_name(spec, loaded), model, loaded, digest.hexdigest()[:16], spec)


def expected_bands(loaded: LoadedModel, count: int) -> str:
    """``count`` input bands in words, named as the source records them (for errors)."""
    bands = loaded.info.get("bands")
    if isinstance(bands, (list, tuple)) and len(bands) == count:
        return f"{count} input bands ({', '.join(str(b) for b in bands)})"
    return f"{count} input bands"


def attach_normalization(backbone: Backbone, choice: str, train_images: torch.Tensor) -> None:
    """Give ``backbone`` the normalisation its source records when ``choice`` (``data.normalization``)
    is ``auto`` or ``model``, and fold it into the backbone's cache key.

    A model that records per-band statistics (TorchGeo weights, GeoFM checkpoints, ONNX sidecars)
    was trained on inputs normalised that way, so probing it with other statistics measures the
    mismatch, not the representation. ``imagenet`` / ``dataset`` keep the data's choice for every model.
    """
    recorded = recorded_normalization(backbone.loaded.info)
    if recorded is None or choice not in ("auto", "model"):
        if choice == "model":
            raise SourceError(
                f"data.normalization=model: model '{backbone.name}' records no input normalization; "
                "use 'auto' or 'dataset'"
            )
        return
    bands = int(train_images.shape[-3])
    chosen = recorded.for_bands(bands)  # what choose_normalization gives for auto / model with a record
    if chosen is None:
        expected = expected_bands(backbone.loaded, len(recorded.mean))
        raise SourceError(
            f"model '{backbone.name}' expects {expected}, normalised by its recorded statistics, but the "
            f"data has {bands} bands; pick the model's bands with data.bands, or set data.normalization=dataset"
        )
    backbone.normalization = chosen
    digest = hashlib.sha256(backbone.key.encode())
    digest.update(json.dumps([chosen.mean, chosen.std, chosen.raw]).encode())
    backbone.key = digest.hexdigest()[:16]


def input_check(backbone: Backbone, images: torch.Tensor) -> None:
    """Run two (normalized) images through the model, so that a band or size mismatch fails with a
    clear message before anything is written. Temporal stacks ``[N, T, C, H, W]`` go in whole to a
    natively temporal model (``temporal_frames``), frame by frame to any other."""
    bands = int(images.shape[-3])
    if images.ndim == 5 and temporal_frames(backbone.model) is None:
        images = images[:2].flatten(0, 1)
    conv = next((m for m in backbone.model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is not None and conv.in_channels != bands:
        raise SourceError(
            f"model '{backbone.name}' takes {expected_bands(backbone.loaded, conv.in_channels)} but the data has "
            f"{bands}; "
            "pick bands with data.bands (e.g. [2, 1, 0] for RGB) or give the model in_chans"
        )
    try:
        with torch.no_grad():
            backbone.model(images[:2])
    except (RuntimeError, AssertionError, ValueError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SourceError(
            f"model '{backbone.name}' cannot take inputs of shape {tuple(images.shape[1:])}: {first} "
            "(check data.image_size / data.bands against the model's input size and bands)"
        ) from None
