"""Task models, decoder heads and the training loop shared by zoo building, downstream
fine-tuning, probing and SatDiFuser.

Names are imported lazily, so that configs holding a :class:`FitConfig` load without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geosane._lazy import lazy_exports

if TYPE_CHECKING:
    from geosane.tasks.config import FitConfig
    from geosane.tasks.detection import (
        DetectionModule,
        DetectionSamples,
        check_detection_data,
        detection_augmentation,
        detection_map,
        evaluate_detection,
        fit_detection,
    )
    from geosane.tasks.detection_models import (
        DETECTOR_KINDS,
        Detector,
        DetectorKind,
        backbone_state,
        build_detector,
        detector_spec,
        load_backbone_state,
    )
    from geosane.tasks.heads import DECODERS, LinearSegHead, UNetDecoder, UPerNetHead, build_decoder
    from geosane.tasks.loop import (
        Distillation,
        EpochCheckpoint,
        FitModule,
        FitProgress,
        FitResult,
        TaskModule,
        evaluate,
        fit,
        make_metric,
        primary_metric_name,
    )
    from geosane.tasks.models import (
        SegmentationModel,
        TaskKind,
        backbone_with_weights,
        build_classifier,
        build_segmenter,
    )

_EXPORTS = {
    "config": ("FitConfig",),
    "detection": (
        "DetectionModule", "DetectionSamples", "check_detection_data", "detection_augmentation", "detection_map",
        "evaluate_detection", "fit_detection",
    ),
    "detection_models": (
        "DETECTOR_KINDS", "Detector", "DetectorKind", "backbone_state", "build_detector", "detector_spec",
        "load_backbone_state",
    ),
    "heads": ("DECODERS", "LinearSegHead", "UNetDecoder", "UPerNetHead", "build_decoder"),
    "loop": (
        "Distillation", "EpochCheckpoint", "FitModule", "FitProgress", "FitResult", "TaskModule", "evaluate", "fit", "make_metric",
        "primary_metric_name",
    ),
    "models": ("SegmentationModel", "TaskKind", "backbone_with_weights", "build_classifier", "build_segmenter"),
}  # fmt: skip
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "DECODERS",
    "DETECTOR_KINDS",
    "DetectionModule",
    "DetectionSamples",
    "Detector",
    "DetectorKind",
    "Distillation",
    "EpochCheckpoint",
    "FitConfig",
    "FitModule",
    "FitProgress",
    "FitResult",
    "LinearSegHead",
    "SegmentationModel",
    "TaskKind",
    "TaskModule",
    "UNetDecoder",
    "UPerNetHead",
    "backbone_state",
    "backbone_with_weights",
    "build_classifier",
    "build_decoder",
    "build_detector",
    "build_segmenter",
    "check_detection_data",
    "detection_augmentation",
    "detection_map",
    "detector_spec",
    "evaluate",
    "evaluate_detection",
    "fit",
    "fit_detection",
    "load_backbone_state",
    "make_metric",
    "primary_metric_name",
]
