"""Image-folder datasets (``root/<class>/<image>``) decoded once into memory.

Remote-sensing scene datasets such as RSSCN7 are small enough to hold as one tensor
``[N, C, H, W]``; decoding once and caching per process makes zoo building, probing and
fine-tuning on CPU fast. Files may be JPEG/PNG/BMP/TIFF images or ``.npy`` arrays ``[H, W, C]``.

Depth is never lost: 8-bit images stay ``uint8`` (0..255). 16-bit PNGs and TIFFs, float TIFFs,
multi-band TIFFs (read with ``tifffile``) and ``.npy`` arrays become ``float32`` holding the
stored values unscaled (a Sentinel-2 L2A reflectance of 1234 stays 1234.0); the per-band
normalisation that every stage computes from the training images then puts them on a common
scale. ``ImageFolderData.source_dtype`` records what the files held; a folder mixing depths
(8-bit with 16-bit, 16-bit with float) is refused, naming an example of each.

Class discovery follows torchvision's ``ImageFolder`` conventions (sorted sub-folder names).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.datasets.folder import find_classes

from geosane.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageFolderData",
    "count_folder_images",
    "load_image_folder",
]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".npy")


@dataclass(frozen=True)
class ImageFolderData:
    """A whole image-folder dataset in memory.

    ``images`` is ``[N, C, H, W]`` (``uint8`` for 8-bit images, else ``float32`` with the stored
    values), ``labels`` is ``[N]`` int64 indexing ``classes``, ``source_dtype`` the files' sample
    type (``uint8``, ``uint16``, ``float32``, ...).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    paths: tuple[str, ...]
    root: str
    source_dtype: str = "uint8"

    def __len__(self) -> int:
        return int(self.labels.numel())

    @property
    def num_bands(self) -> int:
        return int(self.images.shape[1])

    def subset(self, indices: np.ndarray | torch.Tensor | list[int]) -> ImageFolderData:
        """The samples at ``indices`` (classes unchanged)."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return ImageFolderData(
            images=self.images[idx],
            labels=self.labels[idx],
            classes=self.classes,
            paths=tuple(self.paths[i] for i in idx.tolist()),
            root=self.root,
            source_dtype=self.source_dtype,
        )

    def select_classes(self, classes: list[str] | tuple[str, ...]) -> ImageFolderData:
        """Keep only ``classes`` (in the given order) and relabel them ``0..len(classes)-1``."""
        unknown = [c for c in classes if c not in self.classes]
        if unknown:
            raise DataError(f"classes {unknown} not in dataset {self.root} (has {list(self.classes)})")
        old_to_new = torch.full((len(self.classes),), -1, dtype=torch.long)
        for new, name in enumerate(classes):
            old_to_new[self.classes.index(name)] = new
        new_labels = old_to_new[self.labels]
        keep = (new_labels >= 0).nonzero().squeeze(1)
        sub = self.subset(keep)
        return ImageFolderData(
            sub.images, new_labels[keep], tuple(classes), sub.paths, self.root, self.source_dtype
        )

    def select_bands(self, bands: list[int] | tuple[int, ...] | None) -> ImageFolderData:
        """Keep only the channel indices ``bands`` (``None`` keeps all)."""
        if bands is None:
            return self
        bad = [b for b in bands if not 0 <= b < self.num_bands]
        if bad:
            raise DataError(
                f"band indices {bad} out of range for {self.num_bands}-band images in {self.root}"
            )
        return ImageFolderData(
            self.images[:, list(bands)], self.labels, self.classes, self.paths, self.root, self.source_dtype
        )


def _bands_last(array: np.ndarray, path: Path) -> np.ndarray:
    """A decoded ``[H, W]`` or ``[H, W, C]`` image (or ``.npy`` array) as ``[H, W, C]``."""
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim != 3:
        raise DataError(f"{path}: expected an [H, W, C] image, got shape {array.shape}")
    return array


def _read_tiff(path: Path) -> np.ndarray:
    """A TIFF as ``[H, W, C]``, bands placed by the file's own layout (``tifffile`` axes).

    tifffile (pure Python) reads the 16-bit, float and many-band TIFFs Pillow cannot. Samples of
    one pixel stored together (``YXS``: photo tools, GDAL's pixel interleave) are band-last;
    separate planes or pages (``SYX``, ``QYX``, ``CYX``: GDAL's band interleave) are band-first.
    """
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        array, axes = series.asarray(), series.axes
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim != 3 or not axes.endswith(("YX", "YXS")):
        raise DataError(f"{path}: expected one 2-D image (axes YX, YXS or band-first), got axes {axes}")
    return array if axes.endswith("S") else np.moveaxis(array, 0, -1)


def _png_bit_depth(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR chunk, or None if ``path`` is not a PNG."""
    with open(path, "rb") as f:
        header = f.read(26)
    if len(header) < 26 or header[:8] != b"\x89PNG\r\n\x1a\n":
        return None
    return header[24], header[25]


def _resized(array: np.ndarray, size: int) -> torch.Tensor:
    """``[H, W, C]`` values as a float32 ``[C, size, size]`` tensor (bilinear, antialiased)."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)
    if tensor.shape[1:] != (size, size):
        tensor = F.interpolate(tensor[None], size=(size, size), mode="bilinear", antialias=True)[0]
    return tensor


def _read_image(path: Path, size: int) -> tuple[torch.Tensor, str]:
    """Decode one image to ``[C, size, size]`` and the sample type its file held (see module doc)."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            array = np.load(path, allow_pickle=False)
            return _resized(_bands_last(array, path), size), str(array.dtype)
        if suffix in (".tif", ".tiff"):
            array = _read_tiff(path)
            if array.dtype != np.uint8 or array.shape[-1] not in (1, 3):
                return _resized(array, size), str(array.dtype)
            image = Image.fromarray(array[:, :, 0] if array.shape[-1] == 1 else array)
        else:
            png = _png_bit_depth(path) if suffix == ".png" else None
            if png is not None and png[0] == 16 and png[1] in (2, 4, 6):
                # Pillow decodes 16-bit colour PNGs to 8 bits per channel: refuse, never downcast
                raise DataError(
                    f"{path} is a 16-bit colour PNG, which Pillow reads as 8-bit; save it as a 16-bit "
                    "TIFF (or .npy) to keep its depth"
                )
            image = Image.open(path)
        with image as img:
            if img.mode.startswith("I") or img.mode == "F":  # 16/32-bit integer or float grey (PNG)
                array = np.asarray(img)
                dtype = "uint16" if img.mode.startswith("I;16") else str(array.dtype)
                return _resized(_bands_last(array, path), size), dtype
            img = img.convert("RGB") if img.mode not in ("RGB", "L") else img
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    return torch.from_numpy(_bands_last(array, path).copy()).permute(2, 0, 1), "uint8"


def _describe_depth(dtype: str) -> str:
    return {"uint8": "8-bit", "uint16": "16-bit", "int16": "16-bit signed"}.get(dtype, dtype)


@functools.lru_cache(maxsize=8)
def _load_cached(root: str, image_size: int, mtime_ns: int) -> ImageFolderData:
    root_path = Path(root)
    try:
        classes, class_to_idx = find_classes(root)
    except FileNotFoundError as exc:
        raise DataError(f"{root}: {exc}") from None
    paths: list[Path] = []
    labels: list[int] = []
    for cls in classes:
        files = image_files(root_path / cls)
        if not files:
            raise DataError(f"class folder {root_path / cls} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths.extend(files)
        labels.extend([class_to_idx[cls]] * len(files))
    decoded = [_read_image(p, image_size) for p in paths]
    first_of: dict[str, Path] = {}
    for path, (_, dtype) in zip(paths, decoded, strict=True):
        first_of.setdefault(dtype, path)
    if len(first_of) > 1:  # checked before bands: an 8-bit grey PNG and a 16-bit one are both 1 band
        shown = ", ".join(f"{p.relative_to(root_path)} is {_describe_depth(d)}" for d, p in first_of.items())
        raise DataError(f"images in {root} mix sample types ({shown}); use one bit depth per dataset")
    first_with: dict[int, Path] = {}
    for path, (image, _) in zip(paths, decoded, strict=True):
        first_with.setdefault(int(image.shape[0]), path)
    if len(first_with) > 1:
        shown = ", ".join(f"{p.relative_to(root_path)} has {b}" for b, p in sorted(first_with.items()))
        raise DataError(
            f"images in {root} have different band counts ({shown}); use one band count per dataset"
        )
    return ImageFolderData(
        images=torch.stack([image for image, _ in decoded]),
        labels=torch.tensor(labels, dtype=torch.long),
        classes=tuple(classes),
        paths=tuple(str(p) for p in paths),
        root=str(root_path),
        source_dtype=next(iter(first_of)),
    )


def load_image_folder(root: str | Path, image_size: int = 64) -> ImageFolderData:
    """Load ``root/<class>/*`` into memory, every image resized to ``image_size`` squared.

    Results are cached per process (keyed on the folder's modification time), so several
    stages reading the same folder decode it once.
    """
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise DataError(f"image folder not found: {root}")
    if image_size <= 0:
        raise DataError(f"image_size must be positive, got {image_size}")
    return _load_cached(str(root_path), int(image_size), root_path.stat().st_mtime_ns)


def class_dirs(root: str | Path) -> list[Path]:
    """The class sub-folders of an image folder ``root/<class>/...``, sorted (hidden ones skipped)."""
    return sorted(p for p in Path(root).expanduser().iterdir() if p.is_dir() and not p.name.startswith("."))


def image_files(folder: str | Path) -> list[Path]:
    """Every image file under ``folder`` (recursively, by extension), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)


def count_folder_images(root: str | Path) -> int:
    """Number of image files in the class sub-folders of ``root`` (without decoding them)."""
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DataError(f"image folder not found: {root}")
    return sum(len(image_files(sub)) for sub in class_dirs(root_path))
