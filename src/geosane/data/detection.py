"""Object-detection datasets: a user's COCO- or VOC-style folder, and an offline composite set.

:func:`load_detection_folder` reads a folder in one of two layouts into one in-memory
:class:`DetectionData` (images resized to ``image_size`` squared, boxes scaled with them):

- COCO: ``root/annotations.json`` (``images``, ``annotations`` with ``bbox`` = ``[x, y, w, h]``
  in pixels, ``categories``) and the images under ``root/images/``;
- VOC: ``root/Annotations/*.xml`` (``<object><name>`` + ``<bndbox>`` xmin/ymin/xmax/ymax, 1-based
  inclusive pixel indices) and the images under ``root/JPEGImages/``.

Boxes are ``xyxy`` float32 in pixels of the stored image, pixel edges: a box ``[0, 0, 4, 4]``
covers the 4x4 top-left pixels. Bad input is refused with a :class:`DataError` naming the
annotation file, the image and the box (a box that spills over the image border by at most
:data:`SPILL_TOLERANCE` pixels is clipped instead; an image without objects is valid).

:func:`build_composite_detection` writes an offline COCO-style set that is *synthetic*: real
RSSCN7 object scenes (industry, residential, parking) shrunk into boxes and pasted onto real
background scenes (grass, field, forest). It stands in for a detection benchmark where none can
be downloaded; it is not one. Every source photo is used at most once in the whole set, so any
split of the composite images is disjoint at the level of source files.
"""

from __future__ import annotations

import json
import math
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from geosane.data.splits import DEFAULT_FRACTIONS, group_split, split_sizes, stratified_split
from geosane.errors import DataError, cli_flags
from geosane.io import atomic_directory, check_out_dir, mark_out_dir, write_json

__all__ = [
    "COMPOSITE_BACKGROUNDS",
    "COMPOSITE_COMMAND",
    "COMPOSITE_OBJECTS",
    "SPILL_TOLERANCE",
    "DetectionData",
    "build_composite_detection",
    "is_detection_folder",
    "load_detection_folder",
    "split_detection",
    "split_detection_indices",
]

SPILL_TOLERANCE = 1.0
"""Pixels a box may reach past the image border and still be accepted (clipped to the border)."""

COMPOSITE_OBJECTS: dict[str, str] = {"industry": "cIndustry", "resident": "fResident", "parking": "gParking"}
"""Detection class -> the RSSCN7 class folder its object patches are cut from (classes in this order)."""

COMPOSITE_BACKGROUNDS: tuple[str, ...] = ("aGrass", "bField", "eForest")
"""RSSCN7 class folders the composite backgrounds come from."""

COMPOSITE_COMMAND = "detection-composite"
"""The command recorded in a composite folder's ``.geosane-out.json`` (see ``geosane.io.check_out_dir``)."""

COMPOSITE_FORMAT = "geosane-detection-composite"
_SOURCE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class DetectionData:
    """A detection dataset in memory.

    ``images`` uint8 ``[N, 3, S, S]``; ``targets[i]`` holds ``boxes`` float32 ``[n, 4]`` (xyxy,
    pixels of the stored image) and ``labels`` int64 ``[n]`` indexing ``classes`` (``n`` may be 0);
    ``files`` names each image's source file (relative to the dataset folder).
    """

    images: torch.Tensor
    targets: list[dict[str, torch.Tensor]]
    classes: tuple[str, ...]
    files: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, indices: np.ndarray | torch.Tensor | Sequence[int]) -> DetectionData:
        """The images at ``indices`` with their targets (classes unchanged)."""
        idx = [int(i) for i in np.asarray(indices, dtype=np.int64).reshape(-1)]
        return DetectionData(
            images=self.images[torch.tensor(idx, dtype=torch.long)],
            targets=[self.targets[i] for i in idx],
            classes=self.classes,
            files=tuple(self.files[i] for i in idx),
        )


# ---------------------------------------------------------------------------------------------
# reading a user's folder


def _fmt_box(values: Sequence[object]) -> str:
    """A box as the annotation file gave it: ``[10, 20.5, 30, 40]``."""
    shown = []
    for v in values:
        shown.append(f"{v:g}" if isinstance(v, int | float) and not isinstance(v, bool) else repr(v))
    return "[" + ", ".join(shown) + "]"


def _checked_box(
    x0: float, y0: float, x1: float, y1: float, width: int, height: int, where: str, given: str
) -> tuple[float, float, float, float]:
    """A pixel-edge xyxy box inside a ``width`` x ``height`` image, clipped by at most the tolerance.

    ``where`` names the annotation file and image, ``given`` the box as written in the file.
    """
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise DataError(f"{where}: box {given} has a non-finite coordinate")
    if x1 <= x0 or y1 <= y0:
        raise DataError(
            f"{where}: box {given} is degenerate (width {x1 - x0:g}, height {y1 - y0:g}); "
            "every box needs a positive width and height"
        )
    tol = SPILL_TOLERANCE
    if x0 < -tol or y0 < -tol or x1 > width + tol or y1 > height + tol:
        raise DataError(
            f"{where}: box {given} lies outside the {width}x{height} image "
            f"(boxes may spill over the border by at most {tol:g} px, which is clipped)"
        )
    cx0, cy0 = min(max(x0, 0.0), float(width)), min(max(y0, 0.0), float(height))
    cx1, cy1 = min(max(x1, 0.0), float(width)), min(max(y1, 0.0), float(height))
    if cx1 <= cx0 or cy1 <= cy0:
        raise DataError(
            f"{where}: box {given} lies outside the {width}x{height} image (nothing left inside it)"
        )
    return cx0, cy0, cx1, cy1


def _image_inside(root: Path, folder: str, name: str, where: str) -> Path:
    """``root/folder/name``, refused if the name leaves that folder or the file is missing."""
    base = (root / folder).resolve()
    path = root / folder / name
    if Path(name).is_absolute() or not path.resolve().is_relative_to(base):
        raise DataError(f"{where}: image file name '{name}' leaves {root / folder}; refusing to read it")
    if not path.is_file():
        raise DataError(f"{where}: image file {path} is missing")
    return path


def _read_rgb(path: Path) -> Image.Image:
    """Decode ``path`` fully as 8-bit RGB (a one-line DataError for a broken file)."""
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def _resize_with_boxes(
    image: Image.Image, boxes: list[tuple[float, float, float, float]], size: int
) -> tuple[np.ndarray, torch.Tensor]:
    """The image as uint8 ``[3, size, size]`` and its boxes scaled by the same factors."""
    width, height = image.size
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    # numpy transposes: torch's contiguous() on many small images is slow on a busy CPU (thread spin-up)
    array = np.ascontiguousarray(np.asarray(image, dtype=np.uint8).transpose(2, 0, 1))
    box_tensor = torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4)
    scale = torch.tensor([size / width, size / height, size / width, size / height], dtype=torch.float64)
    return array, (box_tensor * scale).to(torch.float32)


def _check_size(path: Path, image: Image.Image, width: object, height: object, where: str) -> None:
    """Refuse an annotation whose recorded image size is not the file's (its boxes would be off)."""
    if width is None and height is None:
        return
    if (width, height) != image.size:
        raise DataError(
            f"{where}: the annotation says the image is {width}x{height} but {path} is "
            f"{image.size[0]}x{image.size[1]}; boxes are in pixels of the annotated size"
        )


def _load_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from None


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _load_coco(root: Path, image_size: int) -> DetectionData:
    ann_path = root / "annotations.json"
    doc = _load_json(ann_path)
    if not isinstance(doc, dict):
        raise DataError(f"{ann_path}: expected a JSON object with images, annotations and categories")
    for key in ("images", "annotations", "categories"):
        if not isinstance(doc.get(key), list):
            raise DataError(
                f"{ann_path}: '{key}' must be a list (COCO layout: images, annotations, categories)"
            )
    categories: dict[int, str] = {}
    for cat in doc["categories"]:
        if (
            not isinstance(cat, dict)
            or not isinstance(cat.get("id"), int)
            or not isinstance(cat.get("name"), str)
        ):
            raise DataError(f"{ann_path}: category {cat!r} needs an integer 'id' and a string 'name'")
        if cat["id"] in categories:
            raise DataError(f"{ann_path}: category id {cat['id']} is defined twice")
        categories[cat["id"]] = cat["name"]
    names = [categories[i] for i in sorted(categories)]
    if len(set(names)) != len(names):
        raise DataError(f"{ann_path}: category names repeat ({names}); each class needs one id")
    label_of = {cat_id: label for label, cat_id in enumerate(sorted(categories))}

    images: list[dict[str, Any]] = []
    seen_ids: set[object] = set()
    seen_files: set[str] = set()
    for entry in doc["images"]:
        if (
            not isinstance(entry, dict)
            or not isinstance(entry.get("id"), int | str)
            or not isinstance(entry.get("file_name"), str)
        ):
            raise DataError(
                f"{ann_path}: image entry {entry!r} needs an integer 'id' and a string 'file_name'"
            )
        if entry["id"] in seen_ids:
            raise DataError(f"{ann_path}: image id {entry['id']!r} is used twice")
        if entry["file_name"] in seen_files:
            raise DataError(f"{ann_path}: image file {entry['file_name']} is listed twice")
        seen_ids.add(entry["id"])
        seen_files.add(entry["file_name"])
        images.append(entry)
    if not images:
        raise DataError(f"{ann_path} lists no images")

    boxes_of: dict[object, list[tuple[list[Any], int]]] = {entry["id"]: [] for entry in images}
    file_of = {entry["id"]: entry["file_name"] for entry in images}
    for ann in doc["annotations"]:
        if not isinstance(ann, dict):
            raise DataError(f"{ann_path}: annotation {ann!r} is not an object")
        if not isinstance(ann.get("image_id"), int | str) or ann["image_id"] not in boxes_of:
            raise DataError(
                f"{ann_path}: annotation {ann.get('id', '?')} refers to image id {ann.get('image_id')!r}, "
                "which 'images' does not list"
            )
        where = f"{ann_path} (image {file_of[ann['image_id']]})"
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(v) for v in bbox):
            raise DataError(
                f"{where}: annotation {ann.get('id', '?')} has bbox {bbox!r}; expected [x, y, w, h]"
            )
        if ann.get("iscrowd", 0) == 1:
            continue  # a crowd region, not an object instance (COCO's own evaluation ignores them)
        cat_id = ann.get("category_id")
        if not isinstance(cat_id, int) or cat_id not in label_of:
            raise DataError(
                f"{where}: box {_fmt_box(bbox)} has category_id {cat_id!r}, which is not among "
                f"the categories (ids {sorted(categories)})"
            )
        boxes_of[ann["image_id"]].append((bbox, label_of[cat_id]))

    arrays: list[np.ndarray] = []
    targets: list[dict[str, torch.Tensor]] = []
    for entry in images:
        where = f"{ann_path} (image {entry['file_name']})"
        path = _image_inside(root, "images", entry["file_name"], where)
        image = _read_rgb(path)
        _check_size(path, image, entry.get("width"), entry.get("height"), where)
        width, height = image.size
        boxes: list[tuple[float, float, float, float]] = []
        labels: list[int] = []
        for bbox, label in boxes_of[entry["id"]]:
            x, y, w, h = (float(v) for v in bbox)
            boxes.append(_checked_box(x, y, x + w, y + h, width, height, where, f"{_fmt_box(bbox)} (xywh)"))
            labels.append(label)
        array, scaled = _resize_with_boxes(image, boxes, image_size)
        arrays.append(array)
        targets.append({"boxes": scaled, "labels": torch.tensor(labels, dtype=torch.int64)})
    return DetectionData(
        images=torch.from_numpy(np.stack(arrays)),
        targets=targets,
        classes=tuple(names),
        files=tuple(f"images/{entry['file_name']}" for entry in images),
    )


def _xml_text(node: ET.Element, tag: str, where: str) -> str:
    child = node.find(tag)
    if child is None or child.text is None or not child.text.strip():
        raise DataError(f"{where}: <{tag}> is missing or empty")
    return child.text.strip()


def _voc_image(root: Path, xml_path: Path, doc: ET.Element, where: str) -> tuple[Path, str]:
    """The image an xml annotates: its ``<filename>`` in JPEGImages, else the file with its stem."""
    name = doc.findtext("filename")
    if name and name.strip():
        path = _image_inside(root, "JPEGImages", name.strip(), where)
        return path, name.strip()
    matches = sorted(
        p for p in (root / "JPEGImages").glob(f"{xml_path.stem}.*") if p.suffix.lower() in _SOURCE_EXTENSIONS
    )
    if not matches:
        raise DataError(f"{where}: no <filename> and no image {root / 'JPEGImages' / xml_path.stem}.* exists")
    return matches[0], matches[0].name


def _load_voc(root: Path, image_size: int) -> DetectionData:
    xml_files = sorted((root / "Annotations").glob("*.xml"))
    if not xml_files:
        raise DataError(f"{root / 'Annotations'} holds no .xml annotation files")
    parsed: list[tuple[Path, str, Image.Image, list[tuple[float, float, float, float]], list[str]]] = []
    for xml_path in xml_files:
        try:
            doc = ET.parse(xml_path).getroot()
        except ET.ParseError as exc:
            raise DataError(f"{xml_path} is not valid XML: {exc}") from None
        except OSError as exc:
            raise DataError(f"cannot read {xml_path}: {exc}") from None
        image_path, file_name = _voc_image(root, xml_path, doc, str(xml_path))
        where = f"{xml_path} (image {file_name})"
        image = _read_rgb(image_path)
        size = doc.find("size")
        if size is not None:
            try:
                sw, sh = int(_xml_text(size, "width", where)), int(_xml_text(size, "height", where))
            except ValueError:
                raise DataError(f"{where}: <size> width/height are not integers") from None
            _check_size(image_path, image, sw, sh, where)
        width, height = image.size
        boxes: list[tuple[float, float, float, float]] = []
        names: list[str] = []
        for k, obj in enumerate(doc.findall("object")):
            name = _xml_text(obj, "name", f"{where}: object {k + 1}")
            bnd = obj.find("bndbox")
            if bnd is None:
                raise DataError(f"{where}: object {k + 1} ({name}) has no <bndbox>")
            raw = [bnd.findtext(tag) for tag in ("xmin", "ymin", "xmax", "ymax")]
            try:
                xmin, ymin, xmax, ymax = (float(v) for v in raw)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                raise DataError(
                    f"{where}: object {k + 1} ({name}) has bndbox {raw} (xmin, ymin, xmax, ymax); "
                    "expected four numbers"
                ) from None
            given = (
                f"{_fmt_box([xmin, ymin, xmax, ymax])} (xmin, ymin, xmax, ymax) of object {k + 1} ({name})"
            )
            # VOC counts pixels from 1, both ends inclusive: pixel edges are xmin - 1 .. xmax
            boxes.append(_checked_box(xmin - 1, ymin - 1, xmax, ymax, width, height, where, given))
            names.append(name)
        parsed.append((image_path, file_name, image, boxes, names))
    classes = tuple(sorted({n for *_, names in parsed for n in names}))
    label_of = {name: i for i, name in enumerate(classes)}
    arrays: list[np.ndarray] = []
    targets: list[dict[str, torch.Tensor]] = []
    for _, _, image, boxes, names in parsed:
        array, scaled = _resize_with_boxes(image, boxes, image_size)
        arrays.append(array)
        targets.append(
            {"boxes": scaled, "labels": torch.tensor([label_of[n] for n in names], dtype=torch.int64)}
        )
    return DetectionData(
        images=torch.from_numpy(np.stack(arrays)),
        targets=targets,
        classes=classes,
        files=tuple(f"JPEGImages/{file_name}" for _, file_name, *_ in parsed),
    )


def _layouts(root: Path) -> tuple[bool, bool]:
    """Whether ``root`` has the COCO layout (``annotations.json``) and the VOC one (``Annotations/``)."""
    return (root / "annotations.json").is_file(), (root / "Annotations").is_dir()


def is_detection_folder(root: str | Path) -> bool:
    """Whether ``root`` is laid out as a COCO- or VOC-style detection folder (nothing is read)."""
    return any(_layouts(Path(root).expanduser()))


def load_detection_folder(root: str | Path, image_size: int = 128) -> DetectionData:
    """Load a COCO-style (``annotations.json`` + ``images/``) or VOC-style (``Annotations/*.xml`` +
    ``JPEGImages/``) folder; images become RGB ``image_size`` squared, boxes are scaled with them.

    COCO classes are the categories in ascending id order (labels ``0..K-1``), ``iscrowd`` regions
    are skipped; VOC classes are the sorted ``<name>`` values of all objects. Nothing is written.
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DataError(f"detection folder not found: {root}")
    if image_size <= 0:
        raise DataError(f"image_size must be positive, got {image_size}", flags=cli_flags("image_size"))
    coco, voc = _layouts(root_path)
    if coco and voc:
        raise DataError(
            f"{root_path} holds both annotations.json (COCO) and Annotations/ (VOC); keep one layout per folder"
        )
    if coco:
        return _load_coco(root_path, int(image_size))
    if voc:
        return _load_voc(root_path, int(image_size))
    raise DataError(
        f"{root_path} is not a detection folder: expected annotations.json + images/ (COCO) "
        "or Annotations/*.xml + JPEGImages/ (VOC)"
    )


# ---------------------------------------------------------------------------------------------
# splits


def _strata(data: DetectionData, fractions: Mapping[str, float]) -> np.ndarray:
    """One stratum per image: its most frequent label (ties: the smallest), -1 without objects.

    Strata too small to give every split an image are pooled; a pool still too small joins the
    largest stratum, so any set with at least one image per split can be split.
    """
    keys = np.array(
        [int(torch.bincount(t["labels"]).argmax()) if t["labels"].numel() else -1 for t in data.targets],
        dtype=np.int64,
    )
    values, counts = np.unique(keys, return_counts=True)
    small = [
        v for v, c in zip(values, counts, strict=True) if min(split_sizes(int(c), fractions).values()) == 0
    ]
    if small:
        pooled = -2
        keys[np.isin(keys, small)] = pooled
        if min(split_sizes(int((keys == pooled).sum()), fractions).values()) == 0:
            rest, rest_counts = np.unique(keys[keys != pooled], return_counts=True)
            if rest.size:
                keys[keys == pooled] = rest[np.argmax(rest_counts)]
    return keys


def split_detection_indices(
    data: DetectionData,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """Image indices per split (``train`` / ``select`` / ``test`` by default), seeded.

    Stratified (:func:`geosane.data.stratified_split`) on each image's main label, images without
    objects forming their own stratum; with ``groups`` (one name per image: a scene, a source
    photo), :func:`geosane.data.group_split` keeps every group in one split instead.
    """
    fractions = dict(fractions or DEFAULT_FRACTIONS)
    if len(data) < len(fractions):
        raise DataError(f"{len(data)} image(s) cannot fill the {len(fractions)} splits {list(fractions)}")
    if groups is not None:
        if len(groups) != len(data):
            raise DataError(f"groups names {len(groups)} images, the dataset has {len(data)}")
        return group_split(list(groups), fractions, seed)
    try:
        return stratified_split(_strata(data, fractions), fractions, seed)
    except DataError:  # its message names internal strata (-1: no objects, -2: pooled classes)
        raise DataError(
            f"{len(data)} image(s) are too few to give every split {dict(fractions)} an image; "
            "use more images or fewer/larger splits"
        ) from None


def split_detection(
    data: DetectionData,
    fractions: Mapping[str, float] | None = None,
    seed: int = 0,
    groups: Sequence[str] | None = None,
) -> dict[str, DetectionData]:
    """:func:`split_detection_indices` as one :class:`DetectionData` per split."""
    return {
        name: data.subset(idx) for name, idx in split_detection_indices(data, fractions, seed, groups).items()
    }


# ---------------------------------------------------------------------------------------------
# the offline composite set


@dataclass(frozen=True)
class _Placement:
    label: int
    source: str  # relative to the source folder: "cIndustry/c001.jpg"
    crop: tuple[int, int, int, int]  # xyxy in pixels of the source photo
    box: tuple[int, int, int, int]  # xyxy in pixels of the composite image


def _source_files(source: Path, folder: str) -> list[str]:
    files = sorted(
        p for p in (source / folder).iterdir() if p.is_file() and p.suffix.lower() in _SOURCE_EXTENSIONS
    )
    if not files:
        raise DataError(f"{source / folder} holds no images ({', '.join(_SOURCE_EXTENSIONS)})")
    return [f"{folder}/{p.name}" for p in files]


def _photo_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def build_composite_detection(
    source: str | Path,
    out: str | Path,
    *,
    num_images: int = 240,
    image_size: int = 128,
    seed: int = 0,
    max_objects: int = 4,
    object_size: tuple[int, int] = (20, 60),
    max_aspect: float = 1.5,
    objects: Mapping[str, str] | None = None,
    backgrounds: Sequence[str] = COMPOSITE_BACKGROUNDS,
) -> Path:
    """Write a synthetic COCO-style detection set made of real RSSCN7 scenes to ``out``.

    Each image is one background photo (from ``backgrounds``) resized to ``image_size``, with
    0..``max_objects`` object patches pasted on it: a random crop of an object photo (class folder
    ``objects[name]``, default :data:`COMPOSITE_OBJECTS`) resized into a box whose side is drawn
    from ``object_size`` and aspect ratio from ``[1/max_aspect, max_aspect]``. Boxes never overlap
    (a box that finds no free place in 50 draws is dropped), so each box holds exactly its patch.
    Every source photo is used at most once. ``seed`` fixes everything: the same call writes
    byte-identical files. ``out`` gets ``annotations.json``, ``images/*.png``, ``composite.json``
    (provenance: source folder, seed, settings, each image's source files and crops) and the
    output marker; it must be new, empty or an earlier composite (replaced as a whole, atomically).
    Every check runs, and the whole set is planned, before anything is written.
    """
    objects = dict(COMPOSITE_OBJECTS if objects is None else objects)
    src = Path(source).expanduser().resolve()
    target = Path(out).expanduser()
    if num_images <= 0:
        raise DataError(f"num_images must be positive, got {num_images}", flags=cli_flags("num_images"))
    if image_size <= 0:
        raise DataError(f"image_size must be positive, got {image_size}", flags=cli_flags("image_size"))
    if max_objects < 0:
        raise DataError(f"max_objects must be >= 0, got {max_objects}", flags=cli_flags("max_objects"))
    lo, hi = object_size
    if not 1 <= lo <= hi <= image_size:
        raise DataError(
            f"object_size must satisfy 1 <= min <= max <= image_size={image_size}, got {object_size}"
        )
    if max_aspect < 1:
        raise DataError(f"max_aspect must be >= 1, got {max_aspect}")
    if not objects or not backgrounds:
        raise DataError("objects and backgrounds must each name at least one class folder")
    if not src.is_dir():
        raise DataError(f"composite source folder not found: {source}")
    shared = set(objects.values()) & set(backgrounds)
    if shared:
        raise DataError(
            f"class folders {sorted(shared)} are both object and background sources; keep them apart"
        )
    missing = [f for f in [*objects.values(), *backgrounds] if not (src / f).is_dir()]
    if missing:
        raise DataError(
            f"composite source {src} lacks the class folder(s) {missing} "
            f"(objects from {sorted(objects.values())}, backgrounds from {list(backgrounds)})"
        )
    if target.resolve().is_relative_to(src):
        raise DataError(
            f"output directory {target} lies inside the source folder {src} (it would become a class folder "
            "of that image folder); choose an output directory outside it (nothing was written)"
        )
    check_out_dir(target, COMPOSITE_COMMAND, {"source": src})

    classes = tuple(objects)
    rng = np.random.default_rng(seed)
    background_pool = [f for folder in backgrounds for f in _source_files(src, folder)]
    background_pool = [background_pool[i] for i in rng.permutation(len(background_pool))]
    object_pools: list[list[str]] = []
    for name in classes:
        files = _source_files(src, objects[name])
        object_pools.append([files[i] for i in rng.permutation(len(files))])
    used = [0] * len(classes)
    if num_images > len(background_pool):
        raise DataError(
            f"num_images={num_images} needs {num_images} background photos but {src} has "
            f"{len(background_pool)} in {list(backgrounds)} (each source photo is used once); lower num_images"
        )

    sizes: dict[str, tuple[int, int]] = {}
    plan: list[tuple[str, list[_Placement]]] = []
    log_aspect = math.log(max_aspect)
    for i in range(num_images):
        placements: list[_Placement] = []
        for _ in range(int(rng.integers(0, max_objects + 1))):
            label = int(rng.integers(0, len(classes)))
            side = int(rng.integers(lo, hi + 1))
            aspect = math.exp(float(rng.uniform(-log_aspect, log_aspect)))
            w = min(max(1, round(side * math.sqrt(aspect))), image_size)
            h = min(max(1, round(side / math.sqrt(aspect))), image_size)
            box = None
            for _try in range(50):
                x0 = int(rng.integers(0, image_size - w + 1))
                y0 = int(rng.integers(0, image_size - h + 1))
                candidate = (x0, y0, x0 + w, y0 + h)
                if not any(_overlaps(candidate, p.box) for p in placements):
                    box = candidate
                    break
            if box is None:
                continue
            pool = object_pools[label]
            if used[label] >= len(pool):
                raise DataError(
                    f"{src / objects[classes[label]]} has only {len(pool)} photos for class '{classes[label]}', "
                    f"too few for num_images={num_images} with max_objects={max_objects} (each source photo "
                    "is used once); lower num_images or max_objects (nothing was written)"
                )
            photo = pool[used[label]]
            used[label] += 1
            if photo not in sizes:
                sizes[photo] = _photo_size(src / photo)
            pw, ph = sizes[photo]
            scale = float(rng.uniform(0.5, 1.0)) * min(pw / w, ph / h)  # crop with the box's aspect
            cw, ch = min(pw, max(1, round(w * scale))), min(ph, max(1, round(h * scale)))
            cx, cy = int(rng.integers(0, pw - cw + 1)), int(rng.integers(0, ph - ch + 1))
            placements.append(_Placement(label, photo, (cx, cy, cx + cw, cy + ch), box))
        plan.append((background_pool[i], placements))

    # decode and paste everything in memory, so a broken source photo stops the run before any write
    rendered: list[Image.Image] = []
    for background, placements in plan:
        canvas = _read_rgb(src / background)
        if canvas.size != (image_size, image_size):
            canvas = canvas.resize((image_size, image_size), Image.Resampling.BILINEAR, reducing_gap=None)
        for p in placements:
            patch = _read_rgb(src / p.source).crop(p.crop)
            patch = patch.resize(
                (p.box[2] - p.box[0], p.box[3] - p.box[1]), Image.Resampling.BILINEAR, reducing_gap=None
            )
            canvas.paste(patch, p.box[:2])
        rendered.append(canvas)

    coco_images: list[dict[str, Any]] = []
    coco_annotations: list[dict[str, Any]] = []
    provenance: list[dict[str, Any]] = []
    for i, (background, placements) in enumerate(plan):
        file_name = f"{i:06d}.png"
        coco_images.append(
            {
                "id": i + 1,
                "file_name": file_name,
                "width": image_size,
                "height": image_size,
                "sources": {"background": background, "objects": [p.source for p in placements]},
            }
        )
        for p in placements:
            x0, y0, x1, y1 = p.box
            coco_annotations.append(
                {
                    "id": len(coco_annotations) + 1,
                    "image_id": i + 1,
                    "category_id": p.label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                    "source": p.source,
                }
            )
        provenance.append(
            {
                "file": file_name,
                "background": background,
                "objects": [
                    {
                        "class": classes[p.label],
                        "source": p.source,
                        "crop_xyxy": list(p.crop),
                        "box_xyxy": list(p.box),
                    }
                    for p in placements
                ],
            }
        )
    annotations = {
        "info": {
            "description": "geosane synthetic composite: real RSSCN7 object scenes pasted onto real RSSCN7 "
            "backgrounds (not a real detection benchmark)",
        },
        "images": coco_images,
        "annotations": coco_annotations,
        "categories": [
            {"id": k + 1, "name": name, "source_class": objects[name]} for k, name in enumerate(classes)
        ],
    }
    settings = {
        "num_images": num_images,
        "image_size": image_size,
        "max_objects": max_objects,
        "object_size": list(object_size),
        "max_aspect": max_aspect,
        "objects": objects,
        "backgrounds": list(backgrounds),
        "placement": "non-overlapping boxes, 50 draws per object, dropped if none fits",
        "crop_scale": [0.5, 1.0],
        "resample": "PIL bilinear",
    }
    record = {
        "format": COMPOSITE_FORMAT,
        "version": 1,
        "source": str(src),
        "seed": seed,
        "settings": settings,
        "classes": list(classes),
        "images": provenance,
    }
    with atomic_directory(target) as tmp:
        (tmp / "images").mkdir()
        for file_name, image in zip((e["file_name"] for e in coco_images), rendered, strict=True):
            image.save(tmp / "images" / file_name, format="PNG", compress_level=1)
        write_json(tmp / "annotations.json", annotations)
        write_json(tmp / "composite.json", record)
        mark_out_dir(tmp, COMPOSITE_COMMAND)
        # the same rule again, right before replacing
        check_out_dir(target, COMPOSITE_COMMAND, {"source": src})
    return target
