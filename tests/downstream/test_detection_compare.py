"""Detection in ``geosane finetune`` / ``compare``: the composite set, a zoo of real timm backbones,
detectors as zoo members, TorchGeo's DIOR on a fake layout, and the bad inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from geosane.data.detection import build_composite_detection
from geosane.downstream import finetune, load_compare_config, load_finetune_config, run_compare
from geosane.downstream.config import DataConfig
from geosane.downstream.data import load_task_data
from geosane.errors import ConfigError, DataError
from geosane.zoo import Zoo, resolve

from .downstream_fakes import ARCH

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = ["train.epochs=1", "train.batch_size=8", "train.warmup_epochs=0", "data.image_size=64"]


@pytest.fixture(scope="module")
def composite(rsscn7_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 composite scenes (real RSSCN7 objects on real backgrounds) at 64 px."""
    out = tmp_path_factory.mktemp("det") / "composite"
    build_composite_detection(rsscn7_root, out, num_images=48, image_size=64, seed=0)
    return out


def _finetune(composite: Path, out: Path, *extra: str) -> object:
    overrides = [
        "init=scratch", f"arch.name={ARCH.name}", f"data.root={composite}", f"out={out}", *FAST, *extra
    ]  # fmt: skip
    return finetune(load_finetune_config("detection", overrides), show_progress=False)


def test_finetune_detection_writes_map_and_a_detector_that_joins_a_zoo(
    composite: Path, tmp_path: Path
) -> None:
    result = _finetune(composite, tmp_path / "run", "train.epochs=2")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == "detection" and metrics["metric"] == "map_50"
    assert 0.0 <= metrics["test"] <= 1.0 and np.isfinite(metrics["select"])
    assert metrics["classes"] == ["industry", "resident", "parking"]
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").open()))
    assert [int(float(r["epoch"])) for r in rows] == [1, 2] and "select_map_50" in rows[0]
    assert result.metric == "map_50"  # type: ignore[attr-defined]
    # the saved detector carries its architecture record: a zoo takes it as a detector
    loaded = resolve(str(tmp_path / "run" / "weights.safetensors"))
    assert loaded.arch is not None and loaded.arch.library == "detector" and loaded.arch.name == "fcos"
    assert loaded.arch.kwargs["backbone"] == ARCH.name and loaded.info["task"] == "detection"
    zoo = Zoo.create(tmp_path / "zoo")
    entry, _ = zoo.add(loaded, model_id="det")
    assert entry.task == "detection" and entry.family == "fcos-resnet" and entry.num_classes == 3
    rebuilt = zoo.load(entry.id).build()  # every tensor (backbone, FPN, heads) loads strictly
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(
        v.numel() for k, v in loaded.state_dict.items() if "running" not in k and "num_batches" not in k
    )
    # a detector init keeps its heads when the classes fit and reset_head is off
    again = _finetune(
        composite, tmp_path / "from-zoo", f"init=zoo:{zoo.path}#det", 'arch.name=""', "task.reset_head=false"
    )
    assert json.loads((tmp_path / "from-zoo" / "metrics.json").read_text())["source"].endswith("#det")
    assert np.isfinite(again.select)  # type: ignore[attr-defined]


def test_tokenize_a_detector_zoo_covers_backbone_and_head(composite: Path, tmp_path: Path) -> None:
    from geosane.tokens import tokenize_zoo

    _finetune(composite, tmp_path / "run")
    zoo = Zoo.create(tmp_path / "zoo")
    zoo.add(resolve(str(tmp_path / "run" / "weights.safetensors")), model_id="det")
    tm = tokenize_zoo(zoo.path, tmp_path / "tokens", token_size=64).load("det")
    names = [n for n in tm.layout if n not in tm.carried]
    assert any(n.startswith("net.backbone.body.model.") for n in names)
    assert any(n.startswith("net.head.") for n in names) and any(
        n.startswith("net.backbone.fpn.") for n in names
    )


def test_compare_detection_runs_the_controls_and_reports(
    composite: Path, tmp_path: Path, tiny_zoo: Path, generated_dir: Path
) -> None:
    out = tmp_path / "compare"
    overrides = {
        "data.root": str(composite), "zoo.dir": str(tiny_zoo), "generated.dir": str(generated_dir),
        "prompt": f"zoo:{tiny_zoo}#base", "seeds": [0, 1], "out": str(out), "train.epochs": 1,
        "train.batch_size": 8, "train.warmup_epochs": 0, "data.image_size": 64,
        "inits": ["scratch", "prompt", "zoo_average", "ties", "dare", "generated", "prompt_noise", "distillation"],
        "zoo.exclude": ["other-arch"], "controls.not_applicable": "report", "plots": True,
    }  # fmt: skip
    result = run_compare("compare_detection", overrides, show_progress=False)
    assert result.metric == "map_50"
    names = {s.name for s in result.summaries}
    assert {"scratch", "prompt", "zoo_average", "ties", "dare", "generated-1", "prompt_noise"} <= names
    for runs in result.results.values():
        assert [r.seed for r in runs] == [0, 1] and all(0.0 <= r.test <= 1.0 for r in runs)
    report = (out / "report.md").read_text()
    assert "map_50" in report and "distillation: not applicable" in report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["meta"]["task"] == "detection" and summary["meta"]["num_classes"] == 3
    assert {p.name for p in result.plots} == {"curves.png", "final_metric.png"}
    # the scratch runs of both seeds differ (seeded heads and data order), a rerun changes nothing
    again = run_compare("compare_detection", overrides, show_progress=False)
    assert [r.test for r in again.results["scratch"]] == [r.test for r in result.results["scratch"]]
    assert all(r.skipped for runs in again.results.values() for r in runs)


def test_detection_bad_inputs_fail_clearly_and_write_nothing(composite: Path, tmp_path: Path) -> None:
    out = tmp_path / "never"
    with pytest.raises(ConfigError, match="a box folder holds detection targets; task 'classification'"):
        _finetune(composite, out, "task.kind=classification")
    with pytest.raises(ConfigError, match=r"data.bands does not apply to detection folders"):
        _finetune(composite, out, "data.bands=[0,1,2]")
    with pytest.raises(ConfigError, match=r"invalid value 'yolo' for 'task.detector': expected one of fcos"):
        _finetune(composite, out, "task.detector=yolo")
    empty = tmp_path / "empty"
    (empty / "images").mkdir(parents=True)
    names = "abcdefghij"
    for n in names:
        Image.new("RGB", (64, 64)).save(empty / "images" / f"{n}.png")
    (empty / "annotations.json").write_text(
        json.dumps({
            "images": [{"id": i, "file_name": f"{n}.png", "width": 64, "height": 64} for i, n in enumerate(names)],
            "annotations": [],
            "categories": [{"id": 1, "name": "thing"}],
        })
    )  # fmt: skip
    with pytest.raises(DataError, match="holds no box at all"):
        _finetune(empty, out)
    with pytest.raises(DataError, match=r"3 image\(s\) are too few to give every split"):
        _finetune(
            empty,
            out,
            "data.max_samples={}",
            "data.fractions={train: 0.6, select: 0.15, test: 0.25}",
            "data.root=" + str(_three(tmp_path)),
        )
    with pytest.raises(ConfigError, match="not classification"):
        load_task_data(DataConfig(kind="torchgeo", dataset="dior", root=tmp_path), "classification")
    assert not out.exists()


def _three(tmp_path: Path) -> Path:
    """A COCO folder of 3 images, one box each: too few for three stratified splits."""
    root = tmp_path / "three"
    (root / "images").mkdir(parents=True)
    for n in "abc":
        Image.new("RGB", (64, 64)).save(root / "images" / f"{n}.png")
    (root / "annotations.json").write_text(
        json.dumps({
            "images": [{"id": i, "file_name": f"{n}.png", "width": 64, "height": 64} for i, n in enumerate("abc")],
            "annotations": [{"id": i, "image_id": i, "bbox": [4, 4, 20, 20], "category_id": 1} for i in range(3)],
            "categories": [{"id": 1, "name": "thing"}],
        })
    )  # fmt: skip
    return root


def _write_fake_dior(root: Path, counts: dict[str, int]) -> Path:
    """TorchGeo's DIOR layout: sample_df.csv, JPEG images and Pascal VOC XML boxes (800 px scaled down)."""
    rng = np.random.default_rng(0)
    rows = ["image_path,label_path,split"]
    classes = ("airplane", "ship", "vehicle")
    for split, count in counts.items():
        for i in range(count):
            name = f"{split}_{i:03d}"
            image = root / "JPEGImages-trainval" / f"{name}.jpg"
            image.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, size=(160, 160, 3), dtype=np.uint8)).save(image)
            label = root / "Annotations" / f"{name}.xml"
            label.parent.mkdir(parents=True, exist_ok=True)
            objects = "".join(
                f"<object><name>{classes[(i + k) % 3]}</name><bndbox><xmin>{10 + 30 * k}</xmin>"
                f"<ymin>{20 + 10 * k}</ymin><xmax>{50 + 30 * k}</xmax><ymax>{60 + 10 * k}</ymax></bndbox></object>"
                for k in range(1 + i % 2)
            )
            label.write_text(f"<annotation><filename>{name}.jpg</filename>{objects}</annotation>")
            rows.append(f"{image.relative_to(root)},{label.relative_to(root)},{split}")
    (root / "sample_df.csv").write_text("\n".join(rows) + "\n")
    return root


def test_dior_through_torchgeo_trains_on_train_and_halves_val(tmp_path: Path) -> None:
    pytest.importorskip("torchgeo")
    root = _write_fake_dior(tmp_path / "dior", {"train": 6, "val": 10, "test": 2})
    config = DataConfig(kind="torchgeo", dataset="dior", root=root, image_size=64)
    data = load_task_data(config)
    assert data.task == "detection" and len(data.classes) == 20 and data.in_chans == 3
    sizes = data.sizes()
    assert sizes["train"] == 6 and sizes["select"] + sizes["test"] == 10 and min(sizes.values()) > 0
    boxes = data.train.targets[0]["boxes"]  # type: ignore[union-attr]
    assert torch.allclose(boxes[0], torch.tensor([10, 20, 50, 60]) * 64 / 160)
    assert data.info["dataset"] == "dior" and data.info["dropped_boxes"]["train"] == 0
    with pytest.raises(DataError, match="DIOR not found"):
        load_task_data(DataConfig(kind="torchgeo", dataset="dior", root=tmp_path / "absent", image_size=64))


def test_compare_detection_preset_loads() -> None:
    config = load_compare_config("compare_detection", ["data.root=x"])
    assert (
        config.task.kind == "detection" and config.data.kind == "detection" and config.task.detector == "fcos"
    )
    assert config.inits[0] == "scratch" and config.generated.top_k == 1


def test_generate_for_a_detector_prompt_and_compare_its_candidates(composite: Path, tmp_path: Path) -> None:
    """A zoo of detectors (backbone, FPN and heads tokenized), an autoencoder over them, generated
    detectors ranked by their own mAP@50 on a box folder, then compared as detection inits."""
    from safetensors.torch import load_file

    from geosane.arch import ArchSpec, LoadedModel
    from geosane.autoencoder import ModelConfig, WeightAutoencoder, save_autoencoder
    from geosane.generation import generate
    from geosane.generation.pipeline import config_from_kwargs
    from geosane.tasks import build_detector
    from geosane.tokens import tokenize_zoo

    zoo = Zoo.create(tmp_path / "zoo")
    for seed in range(2):
        torch.manual_seed(seed)
        detector = build_detector(ARCH.name, 3, image_size=64, fpn_channels=32)
        loaded = LoadedModel("built", detector.state_dict(), ArchSpec.from_dict(detector.record))
        zoo.add(loaded, model_id=f"det-{seed}")
    store = tokenize_zoo(zoo.path, tmp_path / "store", token_size=32)
    torch.manual_seed(0)
    ae = WeightAutoencoder(ModelConfig(d_t=32, d_model=32, n_heads=2, n_layers=1, lat_dim=16, window=16,
                                       max_layers=256, max_chunks=4096, proj_hidden=16, proj_dim=8))  # fmt: skip
    save_autoencoder(ae, tmp_path / "ae.safetensors", extra={"tokenizer": json.dumps(store.settings)})
    config = config_from_kwargs(
        ae=tmp_path / "ae.safetensors", prompt=f"zoo:{zoo.path}#det-0", out=tmp_path / "gen", num_candidates=2,
        top_k=1, select_data=composite, select_split="all", image_size=64, store=tmp_path / "store", anchors=1,
    )  # fmt: skip
    card = generate(config).card
    assert card["arch"]["library"] == "detector" and card["proxy"] == "map_50"
    generated = card["generated_tensors"]
    assert any(n.startswith("net.head.") for n in generated)
    assert any(n.startswith("net.backbone.body.model.") for n in generated)
    assert any(n.endswith("running_mean") for n in card["carried_tensors"])
    assert (
        0.0 <= card["candidates"][0]["proxy_score"] <= 1.0 and card["candidates"][0]["bn_recalibrated_on"] > 0
    )
    weights = load_file(str(tmp_path / "gen" / "candidate_1.safetensors"))
    assert sorted(weights) == sorted(zoo.load("det-0").state_dict)
    with pytest.raises(DataError, match="holds detection data but the prompt"):
        generate(config_from_kwargs(**{**config.__dict__, "prompt": "timm:test_resnet", "random_init": True,
                                       "out": tmp_path / "never"}))  # fmt: skip
    assert not (tmp_path / "never").exists()
    overrides = {
        "data.root": str(composite), "generated.dir": str(tmp_path / "gen"), "seeds": [0], "out": str(tmp_path / "cmp"),
        "inits": ["scratch", "prompt", "generated"], "train.epochs": 1, "train.batch_size": 8,
        "train.warmup_epochs": 0, "task.reset_head": False,
    }  # fmt: skip
    result = run_compare("compare_detection", overrides, show_progress=False)
    assert {s.name for s in result.summaries} == {"scratch", "prompt", "generated-1"}


def _write_fake_vhr10(root: Path, count: int) -> Path:
    """TorchGeo's VHR10 layout: the (unopened) archive, 'positive image set' JPEGs and COCO annotations
    with 1-based category ids and polygon masks; image 3 has no object."""
    folder = root / "NWPU VHR-10 dataset"
    (folder / "positive image set").mkdir(parents=True)
    (root / "NWPU VHR-10 dataset.zip").write_bytes(b"present")  # only its presence is checked
    rng = np.random.default_rng(1)
    images, annotations = [], []
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, size=(100, 120, 3), dtype=np.uint8)).save(
            folder / "positive image set" / f"{i + 1:03d}.jpg"
        )
        images.append({"id": i, "file_name": f"{i + 1:03d}.jpg", "width": 120, "height": 100})
        if i == 3:
            continue
        x, y = 10 + i, 20
        annotations.append({
            "id": i, "image_id": i, "category_id": 1 + i % 10, "iscrowd": 0, "area": 600.0,
            "bbox": [x, y, 30, 20], "segmentation": [[x, y, x + 30, y, x + 30, y + 20, x, y + 20]],
        })  # fmt: skip
    categories = [{"id": c, "name": f"c{c}"} for c in range(1, 11)]
    (folder / "annotations.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return root


def test_vhr10_through_torchgeo_is_cut_into_three_splits_with_zero_based_labels(tmp_path: Path) -> None:
    pytest.importorskip("torchgeo")
    pytest.importorskip("pycocotools")
    root = _write_fake_vhr10(tmp_path / "vhr10", 20)
    data = load_task_data(DataConfig(kind="torchgeo", dataset="vhr10", root=root, image_size=64))
    assert data.task == "detection" and data.classes[0] == "airplane" and len(data.classes) == 10
    assert sum(data.sizes().values()) == 20 and min(data.sizes().values()) > 0
    labels = torch.cat([t["labels"] for part in (data.train, data.select, data.test) for t in part.targets])  # type: ignore[union-attr]
    assert labels.min() == 0 and labels.max() <= 9 and labels.numel() == 19  # one image has no object
    images_without = [
        t
        for part in (data.train, data.select, data.test)
        for t in part.targets
        if t["labels"].numel() == 0  # type: ignore[union-attr]
    ]
    assert len(images_without) == 1


def test_cli_finetune_detection_and_a_bad_detector_kind(
    composite: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tests.conftest import run_cli

    out = tmp_path / "cli-run"
    code, stdout, _ = run_cli(
        capsys, "finetune", "detection", "--data", str(composite), "--init", "scratch", "--out", str(out),
        f"arch.name={ARCH.name}", *FAST, "--json",
    )  # fmt: skip
    assert code == 0, stdout
    assert json.loads(stdout)["metric"] == "map_50" and (out / "weights.safetensors").is_file()
    code, stdout, err = run_cli(
        capsys, "finetune", "detection", "--data", str(composite), "--init", "scratch",
        "--out", str(tmp_path / "never"), f"arch.name={ARCH.name}", "task.detector=yolo",
    )  # fmt: skip
    assert code == 2 and "task.detector" in (stdout + err) and "Traceback" not in err
    assert not (tmp_path / "never").exists()
