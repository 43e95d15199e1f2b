"""Image folders at full depth: 16-bit and float PNG/TIFF, multi-band TIFFs, mixed depths refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from geosane.data import load_image_folder
from geosane.errors import DataError


def _folder(root: Path, writer: object, arrays: dict[str, list[np.ndarray]], suffix: str) -> Path:
    for cls, items in arrays.items():
        (root / cls).mkdir(parents=True)
        for i, array in enumerate(items):
            writer(root / cls / f"{i}{suffix}", array)  # type: ignore[operator]
    return root


def _png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def _tif(path: Path, array: np.ndarray) -> None:
    """A TIFF, pixel-interleaved ([H, W, C], GDAL's INTERLEAVE=PIXEL) when it has bands."""
    if array.ndim == 3:
        tifffile.imwrite(path, array, photometric="minisblack", planarconfig="contig")
    else:
        tifffile.imwrite(path, array)


def _tif_band_first(path: Path, array: np.ndarray) -> None:
    """A band-interleaved TIFF ([C, H, W], GDAL's INTERLEAVE=BAND)."""
    tifffile.imwrite(path, array, photometric="minisblack", planarconfig="separate")


def _values(size: int, dtype: type, top: float, bands: int | None = None, first: bool = False) -> np.ndarray:
    grid = np.linspace(0, top, size * size).reshape(size, size)
    if bands is not None:
        grid = np.stack([grid + b for b in range(bands)], axis=0 if first else -1)
    return grid.astype(dtype)


@pytest.mark.parametrize(("writer", "suffix"), [(_png, ".png"), (_tif, ".tif")])
def test_16_bit_grey_images_keep_every_value(tmp_path: Path, writer: object, suffix: str) -> None:
    image = np.array([[0, 65535, 1234, 30000]] * 4, dtype=np.uint16)
    root = _folder(tmp_path / "d", writer, {"a": [image], "b": [image[::-1].copy()]}, suffix)
    data = load_image_folder(root, image_size=4)
    assert data.source_dtype == "uint16" and data.images.dtype == torch.float32 and data.num_bands == 1
    assert data.images[0, 0, 0].tolist() == [0.0, 65535.0, 1234.0, 30000.0]  # not squeezed into 0..255


def test_float_and_multiband_tiffs_band_first_and_band_last(tmp_path: Path) -> None:
    floats = _folder(tmp_path / "f", _tif, {"a": [_values(8, np.float32, 0.37)], "b": [_values(8, np.float32, 2.5)]},
                     ".tif")  # fmt: skip
    data = load_image_folder(floats, image_size=8)
    assert data.source_dtype == "float32" and data.images[1, 0, 7, 7].item() == pytest.approx(2.5)
    last = _folder(tmp_path / "six", _tif, {"a": [_values(8, np.uint16, 9000, 6)], "b": [_values(8, np.uint16, 10, 6)]},
                   ".tif")  # fmt: skip
    first = _folder(tmp_path / "s2", _tif_band_first, {"a": [_values(8, np.uint16, 9000, 13, True)],
                                            "b": [_values(8, np.uint16, 10, 13, True)]}, ".tif")  # fmt: skip
    six, thirteen = load_image_folder(last, image_size=8), load_image_folder(first, image_size=8)
    assert six.num_bands == 6 and thirteen.num_bands == 13 and six.source_dtype == "uint16"
    assert six.images[0, :, 7, 7].tolist() == [9000.0 + b for b in range(6)]
    assert thirteen.images[0, :, 7, 7].tolist() == [9000.0 + b for b in range(13)]
    resized = load_image_folder(first, image_size=4)
    assert resized.images.shape == (2, 13, 4, 4)


def test_8_bit_images_are_unchanged(tmp_path: Path) -> None:
    rgb = (_values(8, np.float64, 255, 3)).clip(0, 255).astype(np.uint8)
    root = _folder(tmp_path / "d", _png, {"a": [rgb], "b": [rgb]}, ".png")
    data = load_image_folder(root, image_size=8)
    assert data.images.dtype == torch.uint8 and data.source_dtype == "uint8"
    assert torch.equal(data.images[0], torch.from_numpy(rgb).permute(2, 0, 1))


def test_mixed_depths_are_refused_naming_an_example_of_each(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    _png(root / "a" / "x.png", np.zeros((8, 8), dtype=np.uint8))
    _png(root / "b" / "y.png", np.zeros((8, 8), dtype=np.uint16))
    with pytest.raises(DataError, match=r"mix sample types \(a/x.png is 8-bit, b/y.png is 16-bit\)"):
        load_image_folder(root, image_size=8)
    (root / "b" / "y.png").unlink()
    _png(root / "b" / "y.png", np.zeros((8, 8, 3), dtype=np.uint8))
    with pytest.raises(DataError, match=r"different band counts \(a/x.png has 1, b/y.png has 3\)"):
        load_image_folder(root, image_size=8)


def test_a_16_bit_colour_png_is_refused_not_downcast(tmp_path: Path) -> None:
    import struct
    import zlib

    root = tmp_path / "rgb16"
    (root / "a").mkdir(parents=True)
    raw = b"".join(b"\x00" + bytes(4 * 6) for _ in range(4))  # 4x4 RGB, 16 bits per channel

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 16, 2, 0, 0, 0))
    (root / "a" / "x.png").write_bytes(png + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    with pytest.raises(DataError, match="is a 16-bit colour PNG, which Pillow reads as 8-bit"):
        load_image_folder(root, image_size=4)
