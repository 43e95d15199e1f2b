"""Image-folder datasets (``root/<class>/<image>``) decoded once into memory.

Remote-sensing scene datasets such as RSSCN7 are small enough to hold as one ``uint8`` tensor
``[N, C, H, W]``; decoding once and caching per process makes zoo building, probing and
fine-tuning on CPU fast. Files may be JPEG/PNG/TIFF images (via Pillow) or ``.npy`` arrays
``[H, W, C]`` for multi-band scenes.

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

    ``images`` is ``[N, C, H, W]`` (``uint8`` for 8-bit images, ``float32`` for ``.npy`` bands),
    ``labels`` is ``[N]`` int64 indexing ``classes``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    paths: tuple[str, ...]
    root: str

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
        return ImageFolderData(sub.images, new_labels[keep], tuple(classes), sub.paths, self.root)

    def select_bands(self, bands: list[int] | tuple[int, ...] | None) -> ImageFolderData:
        """Keep only the channel indices ``bands`` (``None`` keeps all)."""
        if bands is None:
            return self
        bad = [b for b in bands if not 0 <= b < self.num_bands]
        if bad:
            raise DataError(
                f"band indices {bad} out of range for {self.num_bands}-band images in {self.root}"
            )
        return ImageFolderData(self.images[:, list(bands)], self.labels, self.classes, self.paths, self.root)


def _read_image(path: Path, size: int) -> torch.Tensor:
    """Decode one image to ``[C, size, size]``, resized with antialiasing."""
    if path.suffix.lower() == ".npy":
        array = np.load(path, allow_pickle=False)
        if array.ndim == 2:
            array = array[:, :, None]
        if array.ndim != 3:
            raise DataError(f"{path}: expected an [H, W, C] array, got shape {array.shape}")
        tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)).permute(2, 0, 1)
        if tensor.shape[1:] != (size, size):
            tensor = F.interpolate(tensor[None], size=(size, size), mode="bilinear", antialias=True)[0]
        return tensor
    try:
        with Image.open(path) as img:
            img = img.convert("RGB") if img.mode not in ("RGB", "L") else img
            if img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
            array = np.asarray(img, dtype=np.uint8)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


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
        files = sorted(p for p in (root_path / cls).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not files:
            raise DataError(f"class folder {root_path / cls} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        paths.extend(files)
        labels.extend([class_to_idx[cls]] * len(files))
    images = [_read_image(p, image_size) for p in paths]
    bands = {img.shape[0] for img in images}
    if len(bands) != 1:
        raise DataError(f"images in {root} have different band counts {sorted(bands)}")
    dtypes = {img.dtype for img in images}
    if len(dtypes) != 1:
        raise DataError(f"{root} mixes 8-bit images and float arrays; use one kind per dataset")
    return ImageFolderData(
        images=torch.stack(images),
        labels=torch.tensor(labels, dtype=torch.long),
        classes=tuple(classes),
        paths=tuple(str(p) for p in paths),
        root=str(root_path),
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


def count_folder_images(root: str | Path) -> int:
    """Number of image files in the class sub-folders of ``root`` (without decoding them)."""
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DataError(f"image folder not found: {root}")
    return sum(
        1
        for sub in root_path.iterdir()
        if sub.is_dir() and not sub.name.startswith(".")
        for p in sub.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
    )
