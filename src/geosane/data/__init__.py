"""Datasets shared by every stage: image folders, multi-band scene chips, splits, normalization."""

from geosane.data.csmask import CSMASK_CLASSES, IGNORE_INDEX, SegmentationChips, load_csmask
from geosane.data.folder import ImageFolderData, count_folder_images, load_image_folder
from geosane.data.splits import DEFAULT_FRACTIONS, group_split, stratified_split
from geosane.data.tensors import Normalization, TensorImageDataset, flip_rotate

__all__ = [
    "CSMASK_CLASSES",
    "DEFAULT_FRACTIONS",
    "IGNORE_INDEX",
    "ImageFolderData",
    "Normalization",
    "SegmentationChips",
    "TensorImageDataset",
    "count_folder_images",
    "flip_rotate",
    "group_split",
    "load_csmask",
    "load_image_folder",
    "stratified_split",
]
