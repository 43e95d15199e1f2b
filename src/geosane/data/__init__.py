"""Datasets shared by every stage: image folders, multi-band scene chips, detection folders, splits,
caps, normalization.

Names are imported lazily so that configs (which use ``DEFAULT_FRACTIONS``) load without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geosane._lazy import lazy_exports

if TYPE_CHECKING:
    from geosane.data.csmask import CSMASK_CLASSES, IGNORE_INDEX, SegmentationChips, load_csmask
    from geosane.data.detection import (
        DetectionData,
        build_composite_detection,
        is_detection_folder,
        load_detection_folder,
        split_detection,
        split_detection_indices,
    )
    from geosane.data.folder import ImageFolderData, count_folder_images, load_image_folder
    from geosane.data.normalize import NormalizationChoice, choose_normalization, to_unit_range
    from geosane.data.splits import DEFAULT_FRACTIONS, group_split, split_sizes, stratified_split
    from geosane.data.task import SPLITS, TaskData, TaskPart, cap_per_class, cap_samples, split_fractions
    from geosane.data.tensors import (
        RAW_UNITS,
        Normalization,
        TensorImageDataset,
        flip_rotate,
        recorded_normalization,
    )

_EXPORTS = {
    "csmask": ("CSMASK_CLASSES", "IGNORE_INDEX", "SegmentationChips", "load_csmask"),
    "detection": (
        "DetectionData",
        "build_composite_detection",
        "is_detection_folder",
        "load_detection_folder",
        "split_detection",
        "split_detection_indices",
    ),
    "folder": ("ImageFolderData", "count_folder_images", "load_image_folder"),
    "normalize": ("NormalizationChoice", "choose_normalization", "to_unit_range"),
    "splits": ("DEFAULT_FRACTIONS", "group_split", "split_sizes", "stratified_split"),
    "task": ("SPLITS", "TaskData", "TaskPart", "cap_per_class", "cap_samples", "split_fractions"),
    "tensors": ("RAW_UNITS", "Normalization", "TensorImageDataset", "flip_rotate", "recorded_normalization"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "CSMASK_CLASSES",
    "DEFAULT_FRACTIONS",
    "IGNORE_INDEX",
    "RAW_UNITS",
    "SPLITS",
    "DetectionData",
    "ImageFolderData",
    "Normalization",
    "NormalizationChoice",
    "SegmentationChips",
    "TaskData",
    "TaskPart",
    "TensorImageDataset",
    "build_composite_detection",
    "cap_per_class",
    "cap_samples",
    "choose_normalization",
    "count_folder_images",
    "flip_rotate",
    "group_split",
    "is_detection_folder",
    "load_csmask",
    "load_detection_folder",
    "load_image_folder",
    "recorded_normalization",
    "split_detection",
    "split_detection_indices",
    "split_fractions",
    "split_sizes",
    "stratified_split",
    "to_unit_range",
]
