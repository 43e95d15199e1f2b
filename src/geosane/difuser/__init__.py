"""SatDiFuser: a frozen diffusion UNet as a discriminative backbone, with GW / LW / MoE fusion.

Typical use::

    from geosane.difuser import load_difuse_config, run_difuse
    report = run_difuse(load_difuse_config("difuser/rsscn7_moe.yaml", ["train.epochs=10"]))

Building blocks: :class:`DiffusionBackbone` (hooked UNet, DDIM inversion / generation features),
:class:`FeatureCache`, fusers (:class:`GWFuser`, :class:`LWFuser`, :class:`MoEFuser`), heads and
:class:`DifuserModel`, and :func:`pretrain_ddpm` for an offline pixel-space DDPM.

Names are imported lazily (PEP 562) so that ``geosane --help`` does not load torch, Lightning and
diffusers; type checkers see the real imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from geosane.difuser.backbone import DiffusionBackbone, LayerInfo, find_unet_dir, list_hook_layers
    from geosane.difuser.cache import CachedFeatureDataset, FeatureCache
    from geosane.difuser.config import (
        BackboneConfig,
        ConditioningConfig,
        DecoderConfig,
        DifuseConfig,
        FuserConfig,
        PretrainConfig,
        TaskConfig,
        TrainConfig,
        load_difuse_config,
        load_pretrain_config,
    )
    from geosane.difuser.fusers import (
        BottleneckProjector,
        Fuser,
        GWFuser,
        LWFuser,
        MoEFuser,
        StreamLayout,
        build_fuser,
        feature_key,
    )
    from geosane.difuser.heads import ClassificationHead, DifuserModel, SegmentationHead, build_head
    from geosane.difuser.pretrain import PretrainResult, build_ddpm_unet, pretrain_ddpm
    from geosane.difuser.probe import run_probe, run_scratch_baseline
    from geosane.difuser.train import DifuserModule, build_model, evaluate_model, prepare_features, run_difuse

_EXPORTS = {
    "BackboneConfig": "geosane.difuser.config",
    "BottleneckProjector": "geosane.difuser.fusers",
    "CachedFeatureDataset": "geosane.difuser.cache",
    "ClassificationHead": "geosane.difuser.heads",
    "ConditioningConfig": "geosane.difuser.config",
    "DecoderConfig": "geosane.difuser.config",
    "DiffusionBackbone": "geosane.difuser.backbone",
    "DifuseConfig": "geosane.difuser.config",
    "DifuserModel": "geosane.difuser.heads",
    "DifuserModule": "geosane.difuser.train",
    "FeatureCache": "geosane.difuser.cache",
    "Fuser": "geosane.difuser.fusers",
    "FuserConfig": "geosane.difuser.config",
    "GWFuser": "geosane.difuser.fusers",
    "LWFuser": "geosane.difuser.fusers",
    "LayerInfo": "geosane.difuser.backbone",
    "MoEFuser": "geosane.difuser.fusers",
    "PretrainConfig": "geosane.difuser.config",
    "PretrainResult": "geosane.difuser.pretrain",
    "SegmentationHead": "geosane.difuser.heads",
    "StreamLayout": "geosane.difuser.fusers",
    "TaskConfig": "geosane.difuser.config",
    "TrainConfig": "geosane.difuser.config",
    "build_ddpm_unet": "geosane.difuser.pretrain",
    "build_fuser": "geosane.difuser.fusers",
    "build_head": "geosane.difuser.heads",
    "build_model": "geosane.difuser.train",
    "evaluate_model": "geosane.difuser.train",
    "feature_key": "geosane.difuser.fusers",
    "find_unet_dir": "geosane.difuser.backbone",
    "list_hook_layers": "geosane.difuser.backbone",
    "load_difuse_config": "geosane.difuser.config",
    "load_pretrain_config": "geosane.difuser.config",
    "prepare_features": "geosane.difuser.train",
    "pretrain_ddpm": "geosane.difuser.pretrain",
    "run_difuse": "geosane.difuser.train",
    "run_probe": "geosane.difuser.probe",
    "run_scratch_baseline": "geosane.difuser.probe",
}

__all__ = [
    "BackboneConfig",
    "BottleneckProjector",
    "CachedFeatureDataset",
    "ClassificationHead",
    "ConditioningConfig",
    "DecoderConfig",
    "DiffusionBackbone",
    "DifuseConfig",
    "DifuserModel",
    "DifuserModule",
    "FeatureCache",
    "Fuser",
    "FuserConfig",
    "GWFuser",
    "LWFuser",
    "LayerInfo",
    "MoEFuser",
    "PretrainConfig",
    "PretrainResult",
    "SegmentationHead",
    "StreamLayout",
    "TaskConfig",
    "TrainConfig",
    "build_ddpm_unet",
    "build_fuser",
    "build_head",
    "build_model",
    "evaluate_model",
    "feature_key",
    "find_unet_dir",
    "list_hook_layers",
    "load_difuse_config",
    "load_pretrain_config",
    "prepare_features",
    "pretrain_ddpm",
    "run_difuse",
    "run_probe",
    "run_scratch_baseline",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'geosane.difuser' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
