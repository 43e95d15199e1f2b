"""Detectors on timm backbones: builds, carried backbone weights, box-aware augmentation, fit, mAP."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from PIL import Image
from rich.progress import Progress
from torchvision import tv_tensors

from geosane.errors import GeosaneError, SourceError
from geosane.tasks import (
    DETECTOR_KINDS,
    FitConfig,
    FitProgress,
    backbone_state,
    build_classifier,
    build_detector,
    detection_augmentation,
    detection_map,
    evaluate_detection,
    fit_detection,
    load_backbone_state,
)
from geosane.tasks.detection import DetectionDataset
from geosane.zoo import ArchSpec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 64
COLOURS = ((255, 0, 0), (0, 0, 255))  # class 0: red patches, class 1: blue ones


@dataclass(frozen=True)
class Detections:
    """The shape of ``geosane.data.detection.DetectionData``."""

    images: torch.Tensor
    targets: list[dict[str, torch.Tensor]]
    classes: tuple[str, ...]
    files: tuple[str, ...]


def _scenes(root: Path, n: int, seed: int, empty_every: int = 0) -> Detections:
    """Real RSSCN7 scenes with pasted solid patches and their exact boxes (every ``empty_every``-th
    image keeps no patch)."""
    rng = np.random.default_rng(seed)
    files = sorted(p for d in sorted(root.iterdir()) if d.is_dir() for p in sorted(d.iterdir()))
    chosen = [files[i] for i in rng.choice(len(files), n, replace=False)]
    images, targets = [], []
    for k, path in enumerate(chosen):
        image = np.asarray(Image.open(path).convert("RGB").resize((SIZE, SIZE))).copy()
        boxes, labels = [], []
        if not (empty_every and k % empty_every == 0):
            for _ in range(int(rng.integers(1, 3))):
                w, h = (int(v) for v in rng.integers(10, 24, 2))
                x, y = int(rng.integers(0, SIZE - w)), int(rng.integers(0, SIZE - h))
                label = int(rng.integers(0, 2))
                image[y : y + h, x : x + w] = COLOURS[label]
                boxes.append([x, y, x + w, y + h])
                labels.append(label)
        images.append(torch.from_numpy(image).permute(2, 0, 1))
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                "labels": torch.tensor(labels, dtype=torch.int64),
            }
        )
    names = tuple(str(p.relative_to(root)) for p in chosen)
    return Detections(torch.stack(images), targets, ("red", "blue"), names)


def _tiny(kind: str = "fcos", num_classes: int = 2) -> torch.nn.Module:
    return build_detector("test_resnet", num_classes, kind=kind, image_size=SIZE, fpn_channels=32)


@pytest.mark.parametrize("kind", DETECTOR_KINDS)
def test_every_kind_builds_and_predicts_labels_of_the_task(kind: str) -> None:
    detector = _tiny(kind).eval()
    with torch.no_grad():
        preds = detector(torch.rand(2, 3, SIZE, SIZE))
    assert len(preds) == 2 and {"boxes", "scores", "labels"} <= preds[0].keys()
    labels = torch.cat([p["labels"] for p in preds])
    assert ((labels >= 0) & (labels < 2)).all()  # Faster R-CNN's background label 0 never leaks out
    assert detector.net.transform.min_size == (SIZE,) and detector.net.transform.max_size == SIZE


@pytest.mark.parametrize("name", ["test_resnet", "resnet18"])
def test_classifier_weights_are_carried_bitwise(name: str) -> None:
    classifier = build_classifier(ArchSpec("timm", name, {}), num_classes=7)
    weights = {k: v.clone() for k, v in classifier.state_dict().items()}
    head = {k for k in weights if k.startswith("fc.")}
    detector = build_detector(name, 2, kind="retinanet", backbone_weights=weights, image_size=SIZE)
    carried = backbone_state(detector)
    assert set(carried) == set(weights) - head
    assert all(torch.equal(carried[k], weights[k]) for k in carried)

    fresh = build_detector(ArchSpec("timm", name, {}), 2, image_size=SIZE)
    assert not all(torch.equal(backbone_state(fresh)[k], weights[k]) for k in carried)
    loaded, dropped = load_backbone_state(fresh, weights)
    assert set(loaded) == set(carried) and set(dropped) == head
    assert all(torch.equal(backbone_state(fresh)[k], weights[k]) for k in carried)
    assert all(f"net.backbone.body.model.{k}" in fresh.state_dict() for k in carried)


def test_backbone_weights_of_another_arch_are_refused() -> None:
    detector = _tiny()
    other = build_classifier(ArchSpec("timm", "resnet18", {}), num_classes=2).state_dict()
    before = {k: v.clone() for k, v in backbone_state(detector).items()}
    with pytest.raises(
        SourceError, match=r"backbone: 'bn1.weight' has shape \(64,\), the backbone expects \(32,\)"
    ):
        load_backbone_state(detector, other)
    assert all(torch.equal(before[k], v) for k, v in backbone_state(detector).items())


@pytest.mark.parametrize("kind", DETECTOR_KINDS)
def test_an_image_without_boxes_trains(kind: str) -> None:
    detector = _tiny(kind).train()
    targets = [
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
        {"boxes": torch.tensor([[4.0, 6.0, 30.0, 28.0]]), "labels": torch.tensor([1])},
    ]
    losses = detector(torch.rand(2, 3, SIZE, SIZE), targets)
    loss = sum(losses.values())
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in detector.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    only_empty = detector(torch.rand(2, 3, SIZE, SIZE), targets[:1] * 2)
    assert torch.isfinite(sum(only_empty.values()))


def test_boxes_follow_their_objects_under_flips_and_rotations() -> None:
    image = torch.zeros(3, SIZE, SIZE)
    colour = torch.tensor([1.0, 0.5, 0.25]).view(3, 1, 1)
    image[:, 5:20, 10:40] = colour  # a 30x15 patch
    box = torch.tensor([[10.0, 5.0, 40.0, 20.0]])
    transform = detection_augmentation(square=True, photometric=False)
    seen = set()
    for seed in range(24):
        torch.manual_seed(seed)
        out_image, out = transform(
            tv_tensors.Image(image),
            {
                "boxes": tv_tensors.BoundingBoxes(box, format="XYXY", canvas_size=(SIZE, SIZE)),
                "labels": torch.tensor([0]),
            },
        )
        x1, y1, x2, y2 = (int(v) for v in out["boxes"][0].tolist())
        inside = out_image[:, y1:y2, x1:x2]
        assert inside.shape[1] * inside.shape[2] == 30 * 15
        assert torch.equal(
            inside, image[:, 5:20, 10:40].flatten(1)[:, :1].expand(-1, 450).reshape(inside.shape)
        )
        assert float(out_image.sum()) == float(image.sum())  # the patch is the only thing, all inside
        seen.add((x1, y1, x2, y2))
    assert len(seen) >= 4  # flips and rotations did move it


def test_augmented_dataset_keeps_empty_targets(rsscn7_root: Path) -> None:
    data = _scenes(rsscn7_root, 3, seed=0, empty_every=3)
    item_image, item_target = DetectionDataset(data, augment=True)[0]
    assert (
        item_image.dtype == torch.float32 and 0.0 <= float(item_image.min()) <= float(item_image.max()) <= 1.0
    )
    assert item_target["boxes"].shape == (0, 4) and item_target["labels"].shape == (0,)


def test_detection_map_of_perfect_and_wrong_predictions() -> None:
    targets = [
        {
            "boxes": torch.tensor([[2.0, 2.0, 20.0, 20.0], [30.0, 30.0, 50.0, 60.0]]),
            "labels": torch.tensor([0, 1]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
    ]
    perfect = [{**t, "scores": torch.ones(len(t["labels"]))} for t in targets]
    assert detection_map(perfect, targets) == {"map_50": 1.0, "map": 1.0}
    shifted = [{**p, "boxes": p["boxes"] + 2.0} for p in perfect]  # IoU ~0.6-0.7: counts at 50, not at 95
    values = detection_map(shifted, targets)
    assert values["map_50"] == 1.0 and 0.0 < values["map"] < 1.0
    wrong = [{**p, "labels": 1 - p["labels"]} for p in perfect]
    assert detection_map(wrong, targets)["map_50"] == 0.0


def test_fit_detection_learns_and_records_map(rsscn7_root: Path) -> None:
    train = _scenes(rsscn7_root, 16, seed=1, empty_every=4)
    select = _scenes(rsscn7_root, 8, seed=2)
    detector = _tiny("fcos")
    config = FitConfig(epochs=6, batch_size=4, lr=3e-3, warmup_epochs=0.5)
    with Progress(disable=True) as progress:
        task = progress.add_task("fit", total=None)
        result = fit_detection(detector, train, select, config, callbacks=[FitProgress(progress, task)])
        assert progress.tasks[0].completed == 6 * 4
    history = result.history
    assert [row["epoch"] for row in history] == [float(e) for e in range(1, 7)]
    assert all({"train_loss", "lr", "val_map_50", "val_map"} <= row.keys() for row in history)
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    # measured: select mAP@50 0.11 after one epoch, 0.375 after six
    assert history[-1]["val_map_50"] > max(0.25, history[0]["val_map_50"])
    assert set(result.final) == {"map_50", "map"} and all(0.0 <= v <= 1.0 for v in result.final.values())
    assert result.final == evaluate_detection(detector, select)  # the model is left as evaluated


def test_frozen_backbone_trains_only_fpn_and_head(rsscn7_root: Path) -> None:
    train = _scenes(rsscn7_root, 4, seed=1)
    detector = _tiny("fcos")
    backbone = {k: v.clone() for k, v in backbone_state(detector).items()}  # BN statistics included
    fpn = detector.net.backbone.fpn.inner_blocks[0][0].weight.detach().clone()
    fit_detection(detector, train, config=FitConfig(epochs=1, batch_size=2, freeze_backbone=True))
    assert all(torch.equal(backbone[k], v) for k, v in backbone_state(detector).items())
    assert not torch.equal(detector.net.backbone.fpn.inner_blocks[0][0].weight, fpn)


class _StopAfterFirstEpoch(Callback):
    def on_train_epoch_end(self, trainer, pl_module) -> None:  # type: ignore[no-untyped-def]
        trainer.should_stop = True


def test_resumed_fit_is_bitwise_the_uninterrupted_one(rsscn7_root: Path, tmp_path: Path) -> None:
    train = _scenes(rsscn7_root, 8, seed=1, empty_every=4)
    select = _scenes(rsscn7_root, 2, seed=2)
    config = FitConfig(epochs=2, batch_size=4, lr=2e-3)

    torch.manual_seed(0)
    straight = _tiny("retinanet")
    full = fit_detection(straight, train, select, config)

    torch.manual_seed(0)
    resumed = _tiny("retinanet")
    ckpt = tmp_path / "run.ckpt"
    first = fit_detection(
        resumed, train, select, config, checkpoint_path=ckpt, callbacks=[_StopAfterFirstEpoch()]
    )
    assert [r["epoch"] for r in first.history] == [1.0] and ckpt.is_file()
    torch.manual_seed(123)  # whatever the process did in between
    again = _tiny("retinanet")
    second = fit_detection(again, train, select, config, checkpoint_path=ckpt)
    assert [r["epoch"] for r in second.history] == [1.0, 2.0]
    assert second.history == full.history
    a, b = straight.state_dict(), again.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_detector_settings_are_refused() -> None:
    with pytest.raises(GeosaneError, match="num_classes >= 1, got 0"):
        build_detector("test_resnet", 0)
    with pytest.raises(
        GeosaneError, match=r"unknown detector kind='yolo' \(choose from fcos, retinanet, faster_rcnn\)"
    ):
        build_detector("test_resnet", 2, kind="yolo")
    with pytest.raises(GeosaneError, match="4-band detector needs normalization="):
        build_detector("test_resnet", 2, in_chans=4)


def test_label_outside_the_classes_names_image_and_box(rsscn7_root: Path, tmp_path: Path) -> None:
    train = _scenes(rsscn7_root, 4, seed=3)
    bad = [dict(t) for t in train.targets]
    bad[2] = {
        "boxes": torch.tensor([[1.0, 2.0, 11.0, 12.0], [3.0, 3.0, 9.0, 9.0]]),
        "labels": torch.tensor([1, 2]),
    }
    data = Detections(train.images, bad, train.classes, train.files)
    ckpt = tmp_path / "out" / "run.ckpt"
    message = rf"train image 2 \({train.files[2]}\): box 1 \[3.0, 3.0, 9.0, 9.0\] has label 2; the detector has 2 classes"
    with pytest.raises(GeosaneError, match=message):
        fit_detection(_tiny(), data, config=FitConfig(epochs=1, batch_size=2), checkpoint_path=ckpt)
    assert not (tmp_path / "out").exists()
    bad[2] = {"boxes": torch.tensor([[20.0, 2.0, 10.0, 12.0]]), "labels": torch.tensor([0])}
    with pytest.raises(GeosaneError, match=r"image 2 .*box 0 \[20.0, 2.0, 10.0, 12.0\] is not an xyxy box"):
        evaluate_detection(_tiny(), Detections(train.images, bad, train.classes, train.files))
