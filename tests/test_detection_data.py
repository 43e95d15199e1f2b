"""Detection data: COCO / VOC folders, bad-input rules, the offline RSSCN7 composite, splits.

Every image here is a real RSSCN7 photo (``../shared/data/rsscn7``); folders are written in
``tmp_path``, nothing needs the network.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

import geosane.data.detection as detection
from geosane.data import (
    DetectionData,
    build_composite_detection,
    load_detection_folder,
    split_detection,
    split_detection_indices,
)
from geosane.errors import DataError, GeosaneError
from geosane.io import OUT_MARKER

SIZE = 128  # the shared RSSCN7 copy is stored at 128 x 128


def _rgb(path: Path) -> Image.Image:
    with Image.open(path) as img:
        return img.convert("RGB")


def _pixels(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)


@pytest.fixture(scope="module")
def composite(rsscn7_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("composite") / "set"
    build_composite_detection(rsscn7_root, out, num_images=60, seed=5)
    return out


def _listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------------------------------------
# the composite set


def test_composite_layout_and_provenance(composite: Path, rsscn7_root: Path) -> None:
    assert _listing(composite) == sorted([OUT_MARKER, "annotations.json", "composite.json", "images"])
    record = json.loads((composite / "composite.json").read_text())
    assert record["format"] == "geosane-detection-composite" and record["seed"] == 5
    assert record["source"] == str(rsscn7_root.resolve())
    assert record["settings"]["num_images"] == 60 and record["classes"] == ["industry", "resident", "parking"]
    coco = json.loads((composite / "annotations.json").read_text())
    assert "not a real detection benchmark" in coco["info"]["description"]
    assert [c["source_class"] for c in coco["categories"]] == ["cIndustry", "fResident", "gParking"]

    data = load_detection_folder(composite)
    assert len(data) == 60 and data.images.shape == (60, 3, SIZE, SIZE) and data.images.dtype == torch.uint8
    assert data.classes == ("industry", "resident", "parking")
    assert data.files[0] == "images/000000.png"
    counts = [int(t["labels"].numel()) for t in data.targets]
    assert 0 in counts and max(counts) <= 4 and sum(counts) > 60  # some empty images, ~2 objects each
    assert set(torch.cat([t["labels"] for t in data.targets]).tolist()) == {0, 1, 2}
    for t in data.targets:
        assert t["boxes"].dtype == torch.float32 and t["labels"].dtype == torch.int64
        assert t["boxes"].shape == (t["labels"].numel(), 4)
        side = t["boxes"][:, 2:] - t["boxes"][:, :2]
        assert (side >= 16).all() and (side <= 74).all()  # 20..60 px sides, aspect within 1.5

    # each source photo is used once; backgrounds and objects come from disjoint class folders
    used = [img["sources"]["background"] for img in coco["images"]]
    used += [o for img in coco["images"] for o in img["sources"]["objects"]]
    assert len(used) == len(set(used))
    assert {u.split("/")[0] for u in used[:60]} <= {"aGrass", "bField", "eForest"}
    assert {u.split("/")[0] for u in used[60:]} == {"cIndustry", "fResident", "gParking"}
    assert all((rsscn7_root / u).is_file() for u in used)


def test_composite_boxes_are_exact(composite: Path, rsscn7_root: Path) -> None:
    """Inside a box: the source patch (crop resized to the box); just outside it: the background."""
    record = json.loads((composite / "composite.json").read_text())
    data = load_detection_folder(composite)
    checked = 0
    for i, entry in enumerate(record["images"]):
        image = data.images[i]
        background_image = _rgb(rsscn7_root / entry["background"])
        if background_image.size != (SIZE, SIZE):
            background_image = background_image.resize(
                (SIZE, SIZE), Image.Resampling.BILINEAR, reducing_gap=None
            )
        background = _pixels(background_image)
        covered = torch.zeros(SIZE, SIZE, dtype=torch.bool)
        boxes = [tuple(o["box_xyxy"]) for o in entry["objects"]]
        assert data.targets[i]["boxes"].tolist() == [list(map(float, b)) for b in boxes]
        for obj, (x0, y0, x1, y1) in zip(entry["objects"], boxes, strict=True):
            patch = _rgb(rsscn7_root / obj["source"]).crop(tuple(obj["crop_xyxy"]))
            patch = patch.resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR, reducing_gap=None)
            assert torch.equal(image[:, y0:y1, x0:x1], _pixels(patch)), (entry["file"], obj)
            assert not torch.equal(image[:, y0:y1, x0:x1], background[:, y0:y1, x0:x1])
            assert not covered[y0:y1, x0:x1].any(), "boxes overlap"
            covered[y0:y1, x0:x1] = True
            checked += 1
        # every pixel outside the boxes is the background's: the boxes are tight
        assert torch.equal(image[:, ~covered], background[:, ~covered]), entry["file"]
    assert checked == sum(int(t["labels"].numel()) for t in data.targets) > 0


def test_composite_same_seed_is_byte_identical(composite: Path, rsscn7_root: Path, tmp_path: Path) -> None:
    again = build_composite_detection(rsscn7_root, tmp_path / "again", num_images=60, seed=5)
    for name in ("annotations.json", "composite.json"):
        assert (again / name).read_bytes() == (composite / name).read_bytes()
    assert _listing(again / "images") == _listing(composite / "images")
    a, b = load_detection_folder(composite), load_detection_folder(again)
    assert torch.equal(a.images, b.images)
    other = build_composite_detection(rsscn7_root, tmp_path / "other", num_images=60, seed=6)
    assert (other / "annotations.json").read_bytes() != (composite / "annotations.json").read_bytes()
    assert not torch.equal(load_detection_folder(other).images, a.images)


def test_composite_default_size_is_fast(rsscn7_root: Path, tmp_path: Path) -> None:
    import time

    start = time.perf_counter()
    out = build_composite_detection(rsscn7_root, tmp_path / "full")
    elapsed = time.perf_counter() - start
    data = load_detection_folder(out)
    assert len(data) == 240 and data.images.shape[-1] == 128
    assert elapsed < 30, f"240 composite images took {elapsed:.1f} s"


def test_composite_out_rule(composite: Path, rsscn7_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "set"
    build_composite_detection(rsscn7_root, out, num_images=6, seed=1)
    build_composite_detection(rsscn7_root, out, num_images=4, seed=2)  # an earlier composite: replaced
    assert len(load_detection_folder(out)) == 4 and len(list((out / "images").iterdir())) == 4

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(
        GeosaneError, match=r"mine is not empty and geosane did not write it \(holds notes\.txt\)"
    ):
        build_composite_detection(rsscn7_root, mine, num_images=4)
    assert _listing(mine) == ["notes.txt"] and (mine / "notes.txt").read_text() == "keep me"

    other = tmp_path / "other"
    other.mkdir()
    (other / OUT_MARKER).write_text(json.dumps({"command": "finetune"}))
    with pytest.raises(
        GeosaneError, match=r"written by `geosane finetune`, not `geosane detection-composite`"
    ):
        build_composite_detection(rsscn7_root, other, num_images=4)
    assert _listing(other) == [OUT_MARKER]

    inner = _small_source(
        rsscn7_root, tmp_path / "outer" / "src", 2, ["aGrass", "cIndustry", "fResident", "gParking"]
    )
    with pytest.raises(GeosaneError, match=r"outer is or holds this run's input source"):
        build_composite_detection(inner, inner.parent, num_images=2, backgrounds=("aGrass",))
    assert _listing(inner.parent) == ["src"]
    with pytest.raises(
        DataError, match=r"src/det lies inside the source folder .*src \(it would become a class folder"
    ):
        build_composite_detection(inner, inner / "det", num_images=2, backgrounds=("aGrass",))
    assert _listing(inner) == ["aGrass", "cIndustry", "fResident", "gParking"]


def _small_source(rsscn7_root: Path, root: Path, per_class: int, folders: list[str]) -> Path:
    for folder in folders:
        (root / folder).mkdir(parents=True)
        for p in sorted((rsscn7_root / folder).iterdir())[:per_class]:
            shutil.copy(p, root / folder / p.name)
    return root


def _no_leftovers(parent: Path, *keep: str) -> None:
    assert _listing(parent) == sorted(keep), "a temporary or half-written folder was left behind"


def test_composite_failures_write_nothing(rsscn7_root: Path, tmp_path: Path) -> None:
    all_folders = ["aGrass", "bField", "cIndustry", "eForest", "fResident", "gParking"]
    lacking = _small_source(rsscn7_root, tmp_path / "lacking", 3, [f for f in all_folders if f != "gParking"])
    parent = tmp_path / "outs"
    parent.mkdir()
    with pytest.raises(DataError, match=r"lacking lacks the class folder\(s\) \['gParking'\]"):
        build_composite_detection(lacking, parent / "set", num_images=2)
    _no_leftovers(parent)

    few = _small_source(rsscn7_root, tmp_path / "few", 3, all_folders)
    with pytest.raises(
        DataError, match=r"few/\w+ has only 3 photos for class '\w+', too few for num_images=9"
    ):
        build_composite_detection(few, parent / "set", num_images=9, seed=0)
    _no_leftovers(parent)
    with pytest.raises(DataError, match=r"num_images=10 needs 10 background photos but .*few has 9"):
        build_composite_detection(few, parent / "set", num_images=10)
    _no_leftovers(parent)

    broken = _small_source(rsscn7_root, tmp_path / "broken", 20, all_folders)
    victim = sorted((broken / "aGrass").iterdir())[7]
    victim.write_bytes(b"not a jpeg")
    with pytest.raises(
        DataError, match=rf"cannot read image .*aGrass/{victim.name}"
    ):  # every aGrass photo is used
        build_composite_detection(broken, parent / "set", num_images=20, seed=0, backgrounds=("aGrass",))
    _no_leftovers(parent)

    with pytest.raises(DataError, match=r"object_size must satisfy 1 <= min <= max <= image_size=32"):
        build_composite_detection(few, parent / "set", num_images=2, image_size=32)
    _no_leftovers(parent)


def test_composite_interrupted_while_writing_keeps_the_old_set(
    rsscn7_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "set"
    build_composite_detection(rsscn7_root, out, num_images=3, seed=0)
    before = (out / "annotations.json").read_bytes()

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(detection, "mark_out_dir", interrupted)  # after images and annotations are written
    with pytest.raises(KeyboardInterrupt):
        build_composite_detection(rsscn7_root, out, num_images=5, seed=1)
    _no_leftovers(tmp_path, "set")
    assert (out / "annotations.json").read_bytes() == before and len(list((out / "images").iterdir())) == 3
    with pytest.raises(KeyboardInterrupt):
        build_composite_detection(rsscn7_root, tmp_path / "new", num_images=5, seed=1)
    _no_leftovers(tmp_path, "set")


# ---------------------------------------------------------------------------------------------
# a user's COCO / VOC folder


def _photos(rsscn7_root: Path, n: int) -> list[Path]:
    return [sorted((rsscn7_root / "cIndustry").iterdir())[i] for i in range(n)]


def _write_coco(root: Path, photos: list[Path], annotations: list[dict[str, Any]], **extra: Any) -> Path:
    (root / "images").mkdir(parents=True)
    for p in photos:
        shutil.copy(p, root / "images" / p.name)
    doc = {
        "images": [
            {"id": 10 + i, "file_name": p.name, "width": SIZE, "height": SIZE} for i, p in enumerate(photos)
        ],
        "annotations": annotations,
        "categories": [{"id": 7, "name": "tank"}, {"id": 3, "name": "roof"}],
        **extra,
    }
    (root / "annotations.json").write_text(json.dumps(doc))
    return root


def _ann(image_id: int, bbox: list[float], category_id: int = 3, **extra: Any) -> dict[str, Any]:
    return {"id": 1, "image_id": image_id, "category_id": category_id, "bbox": bbox, **extra}


def test_coco_folder_round_trip(rsscn7_root: Path, tmp_path: Path) -> None:
    photos = _photos(rsscn7_root, 3)
    anns = [
        _ann(10, [10, 20, 30, 40], 7),
        _ann(10, [-0.5, 100, 20, 28.8], 3),  # spills over by <= 1 px: clipped to [0, 100, 19.5, 128]
        _ann(12, [64, 0, 64, 64], 3),
        _ann(12, [0, 0, 5, 5], 7, iscrowd=1),  # a crowd region: skipped
    ]  # image 11 has no objects: valid
    root = _write_coco(tmp_path / "coco", photos, anns)
    data = load_detection_folder(root)
    assert data.classes == ("roof", "tank")  # categories in id order: 3, 7
    assert data.files == tuple(f"images/{p.name}" for p in photos)
    assert torch.equal(data.images, torch.stack([_pixels(_rgb(p)) for p in photos]))
    assert data.targets[0]["boxes"].tolist() == [[10, 20, 40, 60], [0, 100, 19.5, 128]]
    assert data.targets[0]["labels"].tolist() == [1, 0]
    assert data.targets[1]["boxes"].shape == (0, 4) and data.targets[1]["labels"].shape == (0,)
    assert data.targets[2]["boxes"].tolist() == [[64, 0, 128, 64]] and data.targets[2]["labels"].tolist() == [
        0
    ]

    half = load_detection_folder(root, image_size=64)  # boxes scale with the image
    assert half.images.shape == (3, 3, 64, 64)
    assert half.targets[0]["boxes"].tolist() == [[5, 10, 20, 30], [0, 50, 9.75, 64]]
    resized = _rgb(photos[0]).resize((64, 64), Image.Resampling.BILINEAR, reducing_gap=None)
    assert torch.equal(half.images[0], _pixels(resized))

    sub = data.subset([2, 0])
    assert isinstance(sub, DetectionData) and sub.files == (data.files[2], data.files[0])
    assert torch.equal(sub.images[1], data.images[0]) and sub.targets[0] is data.targets[2]


def _write_voc(root: Path, items: list[tuple[Path, list[tuple[str, list[str]]]]], size: bool = True) -> Path:
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for photo, objects in items:
        shutil.copy(photo, root / "JPEGImages" / photo.name)
        objs = "".join(
            f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin>"
            f"<xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
            for name, b in objects
        )
        head = f"<size><width>{SIZE}</width><height>{SIZE}</height><depth>3</depth></size>" if size else ""
        xml = f"<annotation><filename>{photo.name}</filename>{head}{objs}</annotation>"
        (root / "Annotations" / f"{photo.stem}.xml").write_text(xml)
    return root


def test_voc_folder_round_trip(rsscn7_root: Path, tmp_path: Path) -> None:
    photos = _photos(rsscn7_root, 3)
    items = [
        (photos[0], [("tank", ["11", "21", "40", "60"]), ("roof", ["1", "1", "128", "128"])]),
        (photos[1], []),
        (photos[2], [("car", ["65.5", "1", "129", "64"])]),  # xmax 129 spills over by 1 px: clipped
    ]
    data = load_detection_folder(_write_voc(tmp_path / "voc", items))
    assert data.classes == ("car", "roof", "tank")  # every <name> is a class, sorted
    assert data.files == tuple(f"JPEGImages/{p.name}" for p in photos)
    assert torch.equal(data.images, torch.stack([_pixels(_rgb(p)) for p in photos]))
    # 1-based inclusive pixel indices -> pixel edges: xmin - 1 .. xmax
    assert data.targets[0]["boxes"].tolist() == [[10, 20, 40, 60], [0, 0, 128, 128]]
    assert data.targets[0]["labels"].tolist() == [2, 1]
    assert data.targets[1]["boxes"].shape == (0, 4)
    assert data.targets[2]["boxes"].tolist() == [[64.5, 0, 128, 64]] and data.targets[2][
        "labels"
    ].tolist() == [0]


def test_composite_as_voc_loads_the_same(composite: Path, tmp_path: Path) -> None:
    """The composite (COCO) rewritten as VOC loads back to the same images, boxes and class names."""
    coco = load_detection_folder(composite)
    root = tmp_path / "voc"
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for file, target in zip(coco.files, coco.targets, strict=True):
        name = Path(file).name
        shutil.copy(composite / file, root / "JPEGImages" / name)
        objs = "".join(
            f"<object><name>{coco.classes[int(label)]}</name><bndbox><xmin>{x0 + 1:g}</xmin><ymin>{y0 + 1:g}</ymin>"
            f"<xmax>{x1:g}</xmax><ymax>{y1:g}</ymax></bndbox></object>"
            for (x0, y0, x1, y1), label in zip(target["boxes"].tolist(), target["labels"], strict=True)
        )
        (root / "Annotations" / f"{Path(name).stem}.xml").write_text(f"<annotation>{objs}</annotation>")
    voc = load_detection_folder(root)
    assert voc.classes == tuple(sorted(coco.classes))
    assert torch.equal(voc.images, coco.images)
    for a, b in zip(coco.targets, voc.targets, strict=True):
        assert torch.equal(a["boxes"], b["boxes"])
        assert [coco.classes[i] for i in a["labels"]] == [voc.classes[i] for i in b["labels"]]


@pytest.mark.parametrize(
    ("anns", "pattern"),
    [
        (
            [_ann(10, [100, 10, 40, 20])],
            r"annotations\.json \(image (\w+)\.jpg\): box \[100, 10, 40, 20\] \(xywh\) lies outside the 128x128 "
            r"image \(boxes may spill over the border by at most 1 px",
        ),
        (
            [_ann(11, [10, -2, 20, 20])],
            r"annotations\.json \(image \w+\.jpg\): box \[10, -2, 20, 20\] \(xywh\) lies outside the 128x128 image",
        ),
        (
            [_ann(11, [128.5, 10, 0.4, 20])],
            r"box \[128\.5, 10, 0\.4, 20\] \(xywh\) lies outside the 128x128 image \(nothing left inside it\)",
        ),
        (
            [_ann(10, [10, 10, 0, 5])],
            r"annotations\.json \(image \w+\.jpg\): box \[10, 10, 0, 5\] \(xywh\) is degenerate \(width 0, height 5\)",
        ),
        ([_ann(10, [10, 10, 5, -3])], r"box \[10, 10, 5, -3\] \(xywh\) is degenerate \(width 5, height -3\)"),
        (
            [_ann(11, [1, 2, 3, 4], category_id=9)],
            r"annotations\.json \(image \w+\.jpg\): box \[1, 2, 3, 4\] has category_id 9, which is not among "
            r"the categories \(ids \[3, 7\]\)",
        ),
        ([_ann(10, [1, 2, 3])], r"annotation 1 has bbox \[1, 2, 3\]; expected \[x, y, w, h\]"),
        ([_ann(99, [1, 2, 3, 4])], r"annotation 1 refers to image id 99, which 'images' does not list"),
        ([_ann([10], [1, 2, 3, 4])], r"annotation 1 refers to image id \[10\], which 'images' does not list"),
        (
            [_ann(10, [1, 2, 3, 4], category_id=[3])],
            r"box \[1, 2, 3, 4\] has category_id \[3\], which is not among",
        ),
    ],
)
def test_coco_bad_boxes(rsscn7_root: Path, tmp_path: Path, anns: list[dict[str, Any]], pattern: str) -> None:
    photos = _photos(rsscn7_root, 2)
    root = _write_coco(tmp_path / "coco", photos, anns)
    with pytest.raises(DataError, match=pattern) as info:
        load_detection_folder(root)
    if "(image" in pattern:  # the message names the right image file
        image_id = anns[0]["image_id"]
        assert f"(image {photos[image_id - 10].name})" in str(info.value)
    assert sorted(p.name for p in root.rglob("*")) == sorted(
        ["annotations.json", "images", *(p.name for p in photos)]
    )


def test_coco_bad_files(rsscn7_root: Path, tmp_path: Path) -> None:
    photos = _photos(rsscn7_root, 2)
    root = _write_coco(tmp_path / "missing", photos, [])
    (root / "images" / photos[1].name).unlink()
    with pytest.raises(
        DataError,
        match=rf"\(image {photos[1].stem}\.jpg\): image file .*images/{photos[1].stem}\.jpg is missing",
    ):
        load_detection_folder(root)

    root = _write_coco(tmp_path / "broken", photos, [])
    (root / "images" / photos[0].name).write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match=rf"cannot read image .*{photos[0].stem}\.jpg"):
        load_detection_folder(root)

    root = _write_coco(tmp_path / "json", photos, [])
    (root / "annotations.json").write_text('{"images": [}')
    with pytest.raises(DataError, match=r"json/annotations\.json is not valid JSON: .* at line 1 column 13"):
        load_detection_folder(root)

    root = _write_coco(tmp_path / "keys", photos, [])
    (root / "annotations.json").write_text(
        json.dumps({"images": [], "annotations": {"x": 1}, "categories": []})
    )
    with pytest.raises(DataError, match=r"annotations\.json: 'annotations' must be a list"):
        load_detection_folder(root)

    root = _write_coco(tmp_path / "escape", photos, [])
    doc = json.loads((root / "annotations.json").read_text())
    doc["images"][0]["file_name"] = "../../secret.jpg"
    (root / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"image file name '\.\./\.\./secret\.jpg' leaves .*escape/images"):
        load_detection_folder(root)

    root = _write_coco(tmp_path / "size", photos, [])
    doc = json.loads((root / "annotations.json").read_text())
    doc["images"][1]["width"] = 400
    (root / "annotations.json").write_text(json.dumps(doc))
    with pytest.raises(
        DataError, match=rf"\(image {photos[1].stem}\.jpg\): the annotation says the image is 400x128"
    ):
        load_detection_folder(root)

    with pytest.raises(DataError, match=r"is not a detection folder: expected annotations\.json"):
        load_detection_folder(tmp_path)
    with pytest.raises(DataError, match=r"detection folder not found"):
        load_detection_folder(tmp_path / "nope")


@pytest.mark.parametrize(
    ("box", "pattern"),
    [
        (
            ["100", "10", "140", "30"],
            r"box \[100, 10, 140, 30\] \(xmin, ymin, xmax, ymax\) of object 1 \(tank\) lies outside the 128x128 image",
        ),
        (
            ["10", "10", "8", "30"],
            r"box \[10, 10, 8, 30\] \(xmin, ymin, xmax, ymax\) of object 1 \(tank\) is degenerate \(width -1, height 21\)",
        ),
        (
            ["10", "ten", "20", "30"],
            r"object 1 \(tank\) has bndbox \['10', 'ten', '20', '30'\] .*expected four numbers",
        ),
    ],
)
def test_voc_bad_boxes(rsscn7_root: Path, tmp_path: Path, box: list[str], pattern: str) -> None:
    photos = _photos(rsscn7_root, 2)
    root = _write_voc(tmp_path / "voc", [(photos[0], []), (photos[1], [("tank", box)])])
    with pytest.raises(
        DataError, match=rf"Annotations/{photos[1].stem}\.xml \(image {photos[1].stem}\.jpg\): {pattern}"
    ):
        load_detection_folder(root)


def test_voc_bad_files(rsscn7_root: Path, tmp_path: Path) -> None:
    photos = _photos(rsscn7_root, 2)
    root = _write_voc(tmp_path / "xml", [(photos[0], []), (photos[1], [])])
    (root / "Annotations" / f"{photos[1].stem}.xml").write_text("<annotation><object>")
    with pytest.raises(DataError, match=rf"Annotations/{photos[1].stem}\.xml is not valid XML: .*line 1"):
        load_detection_folder(root)

    root = _write_voc(tmp_path / "missing", [(photos[0], []), (photos[1], [])])
    (root / "JPEGImages" / photos[0].name).unlink()
    with pytest.raises(
        DataError, match=rf"{photos[0].stem}\.xml: image file .*JPEGImages/{photos[0].stem}\.jpg is missing"
    ):
        load_detection_folder(root)

    root = _write_voc(tmp_path / "noname", [(photos[0], [("", ["1", "1", "5", "5"])])])
    with pytest.raises(
        DataError,
        match=rf"{photos[0].stem}\.xml \(image {photos[0].stem}\.jpg\): object 1: <name> is missing",
    ):
        load_detection_folder(root)

    root = _write_voc(tmp_path / "both", [(photos[0], [])])
    (root / "annotations.json").write_text("{}")
    with pytest.raises(DataError, match=r"holds both annotations\.json \(COCO\) and Annotations/ \(VOC\)"):
        load_detection_folder(root)


# ---------------------------------------------------------------------------------------------
# splits


def test_split_detection_is_seeded_disjoint_and_keeps_sources_apart(composite: Path) -> None:
    data = load_detection_folder(composite)
    a = split_detection_indices(data, seed=3)
    assert a.keys() == {"train", "select", "test"}
    assert all(np.array_equal(a[k], split_detection_indices(data, seed=3)[k]) for k in a)
    assert any(not np.array_equal(a[k], split_detection_indices(data, seed=4)[k]) for k in a)
    assert np.array_equal(np.sort(np.concatenate(list(a.values()))), np.arange(len(data)))
    sizes = [a[k].size for k in ("train", "select", "test")]
    assert abs(sizes[0] - 36) <= 2 and abs(sizes[1] - 6) <= 2 and abs(sizes[2] - 18) <= 2, sizes

    parts = split_detection(data, seed=3)
    assert parts["test"].files == tuple(data.files[i] for i in a["test"])
    assert torch.equal(parts["select"].images, data.images[torch.from_numpy(a["select"])])
    assert parts["train"].classes == data.classes
    # no source photo appears in images of two splits
    coco = json.loads((composite / "annotations.json").read_text())
    sources = {f"images/{img['file_name']}": img["sources"] for img in coco["images"]}
    used = {
        k: {s for f in part.files for s in [sources[f]["background"], *sources[f]["objects"]]}
        for k, part in parts.items()
    }
    assert not (used["train"] & used["select"]) and not (used["train"] & used["test"])
    assert not (used["select"] & used["test"])
    # images without objects land in every split (their own stratum)
    assert all(any(t["labels"].numel() == 0 for t in part.targets) for part in parts.values())


def test_split_detection_small_strata_and_groups(composite: Path) -> None:
    data = load_detection_folder(composite).subset(range(7))  # strata too small for three splits: pooled
    parts = split_detection_indices(data, {"train": 0.5, "select": 0.25, "test": 0.25}, seed=0)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(7))
    assert all(idx.size for idx in parts.values())

    groups = ["a", "a", "b", "b", "c", "d", "d"]
    by_group = split_detection_indices(data, seed=0, groups=groups)
    for idx in by_group.values():
        for other in by_group.values():
            if other is not idx:
                assert not {groups[i] for i in idx} & {groups[i] for i in other}
    with pytest.raises(DataError, match=r"groups names 2 images, the dataset has 7"):
        split_detection_indices(data, groups=["a", "b"])
    with pytest.raises(DataError, match=r"2 image\(s\) cannot fill the 3 splits"):
        split_detection_indices(data.subset([0, 1]))
