"""Task models, decoder heads and the training loop shared by zoo building, downstream
fine-tuning, probing and SatDiFuser."""

from geosane.tasks.fit import (
    EpochCheckpoint,
    FitConfig,
    FitProgress,
    FitResult,
    TaskModule,
    evaluate,
    fit,
    make_metric,
    primary_metric_name,
)
from geosane.tasks.heads import DECODERS, LinearSegHead, UNetDecoder, UPerNetHead, build_decoder
from geosane.tasks.models import (
    SegmentationModel,
    TaskKind,
    backbone_with_weights,
    build_classifier,
    build_segmenter,
)

__all__ = [
    "DECODERS",
    "EpochCheckpoint",
    "FitConfig",
    "FitProgress",
    "FitResult",
    "LinearSegHead",
    "SegmentationModel",
    "TaskKind",
    "TaskModule",
    "UNetDecoder",
    "UPerNetHead",
    "backbone_with_weights",
    "build_classifier",
    "build_decoder",
    "build_segmenter",
    "evaluate",
    "fit",
    "make_metric",
    "primary_metric_name",
]
