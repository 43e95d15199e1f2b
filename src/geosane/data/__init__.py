"""Datasets shared by every stage: image folders, multi-band scene chips, splits, normalization."""

from geosane.data.csmask import CSMASK_CLASSES, IGNORE_INDEX, SegmentationChips, load_csmask
from geosane.data.folder import ImageFolderData, load_image_folder
from geosane.data.splits import DEFAULT_FRACTIONS, stratified_split
from geosane.data.tensors import Normalization, TensorImageDataset

__all__ = [
    "CSMASK_CLASSES",
    "DEFAULT_FRACTIONS",
    "IGNORE_INDEX",
    "ImageFolderData",
    "Normalization",
    "SegmentationChips",
    "TensorImageDataset",
    "load_csmask",
    "load_image_folder",
    "stratified_split",
]
