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

from typing import TYPE_CHECKING

from geosane._lazy import lazy_exports

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
        SatelliteMetadata,
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
    from geosane.difuser.satunet import SatUNet, diffusionsat_metadata
    from geosane.difuser.sweep import run_difuse_sweep
    from geosane.difuser.train import DifuserModule, build_model, evaluate_model, prepare_features, run_difuse

_EXPORTS = {
    "config": (
        "BackboneConfig",
        "ConditioningConfig",
        "DecoderConfig",
        "DifuseConfig",
        "FuserConfig",
        "PretrainConfig",
        "SatelliteMetadata",
        "TaskConfig",
        "TrainConfig",
        "load_difuse_config",
        "load_pretrain_config",
    ),
    "fusers": (
        "BottleneckProjector",
        "Fuser",
        "GWFuser",
        "LWFuser",
        "MoEFuser",
        "StreamLayout",
        "build_fuser",
        "feature_key",
    ),
    "cache": ("CachedFeatureDataset", "FeatureCache"),
    "heads": ("ClassificationHead", "DifuserModel", "SegmentationHead", "build_head"),
    "backbone": ("DiffusionBackbone", "LayerInfo", "find_unet_dir", "list_hook_layers"),
    "train": ("DifuserModule", "build_model", "evaluate_model", "prepare_features", "run_difuse"),
    "pretrain": ("PretrainResult", "build_ddpm_unet", "pretrain_ddpm"),
    "probe": ("run_probe", "run_scratch_baseline"),
    "satunet": ("SatUNet", "diffusionsat_metadata"),
    "sweep": ("run_difuse_sweep",),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

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
    "SatUNet",
    "SatelliteMetadata",
    "SegmentationHead",
    "StreamLayout",
    "TaskConfig",
    "TrainConfig",
    "build_ddpm_unet",
    "build_fuser",
    "build_head",
    "build_model",
    "diffusionsat_metadata",
    "evaluate_model",
    "feature_key",
    "find_unet_dir",
    "list_hook_layers",
    "load_difuse_config",
    "load_pretrain_config",
    "prepare_features",
    "pretrain_ddpm",
    "run_difuse",
    "run_difuse_sweep",
    "run_probe",
    "run_scratch_baseline",
]
