"""``geosane data``: the detection composite and the folder summary, from the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from tests.conftest import run_cli


def test_composite_then_show_with_a_preview(
    rsscn7_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "det"
    code, _, err = run_cli(capsys, "data", "detection-composite", "--source", str(rsscn7_root), "--out", str(out),
                           "--num-images", "12", "--image-size", "96", "--seed", "3")  # fmt: skip
    assert code == 0, err
    coco = json.loads((out / "annotations.json").read_text())
    boxes = len(coco["annotations"])
    assert len(coco["images"]) == 12 and f"wrote 12 images with {boxes} boxes" in err
    preview = tmp_path / "preview.png"
    code, _, err = run_cli(capsys, "data", "show-detection", str(out), "--image-size", "96",
                           "--preview", str(preview), "--count", "8")  # fmt: skip
    assert code == 0, err
    assert "12 images" in err and f"{boxes} boxes" in err
    for name in ("industry", "resident", "parking"):
        assert name in err
    with Image.open(preview) as image:  # a 4 x 2 grid of 96 px images with 2 px padding
        assert image.size == (4 * 98 + 2, 2 * 98 + 2)


def test_a_source_without_an_object_class_exits_2_and_writes_nothing(
    rsscn7_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "rsscn7"
    for name in ("aGrass", "bField", "eForest", "cIndustry", "fResident"):  # no gParking
        shutil.copytree(rsscn7_root / name, source / name)
    out = tmp_path / "det"
    code, _, err = run_cli(capsys, "data", "detection-composite", "--source", str(source), "--out", str(out))
    assert code == 2 and "gParking" in err and "Traceback" not in err
    assert not out.exists()


def test_show_names_the_bad_box(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "coco"
    (root / "images").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(root / "images" / "a.png")
    coco = {
        "images": [{"id": 1, "file_name": "a.png", "width": 32, "height": 32}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 4, 0, 8]}],
        "categories": [{"id": 1, "name": "car"}],
    }
    (root / "annotations.json").write_text(json.dumps(coco))
    code, _, err = run_cli(capsys, "data", "show-detection", str(root))
    assert code == 2 and "a.png" in err and "Traceback" not in err


def test_a_bad_count_names_the_flag_and_writes_nothing(
    rsscn7_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "det"
    code, _, err = run_cli(capsys, "data", "detection-composite", "--source", str(rsscn7_root), "--out", str(out),
                           "--num-images", "0")  # fmt: skip
    assert code == 2 and "--num-images must be positive, got 0" in err
    assert not out.exists()
