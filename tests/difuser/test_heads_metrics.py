"""Heads (classification single/multi-label, UPerNet segmentation) and the evaluation metrics."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from geosane.config import from_dict
from geosane.difuser import (
    ClassificationHead,
    DecoderConfig,
    DifuserModel,
    DifuserModule,
    GWFuser,
    LayerInfo,
    SegmentationHead,
    StreamLayout,
    build_head,
    evaluate_model,
    feature_key,
)
from geosane.tasks import FitConfig

LAYERS = [
    LayerInfo("up0_res0", "m0", "res", 0, 8, (4, 4)),
    LayerInfo("up1_res0", "m1", "res", 1, 4, (8, 8)),
]
LAYOUT = StreamLayout.from_layers(LAYERS, (1, 21), "scale")


def feats(batch: int) -> dict[str, torch.Tensor]:
    return {feature_key(t, i.name): torch.randn(batch, i.channels, *i.size) for t in (1, 21) for i in LAYERS}


def test_classification_head_sums_scales_then_pools() -> None:
    head = ClassificationHead(6, 5)
    fine, coarse = torch.randn(2, 6, 8, 8), torch.randn(2, 6, 4, 4)
    up = nn.functional.interpolate(coarse, size=(8, 8), mode="bilinear", align_corners=False)
    expected = head.linear((fine + up).mean(dim=(2, 3)))
    assert torch.allclose(head([fine, coarse]), expected, atol=1e-6)


def test_upernet_head_defaults_to_512_channels_and_mask_size() -> None:
    cfg = from_dict(DecoderConfig, {"name": "upernet"})
    head = build_head(cfg, width=16, num_scales=2, num_classes=3)
    assert isinstance(head, SegmentationHead)
    assert head.upernet.classifier.in_channels == 512
    model = DifuserModel(GWFuser(LAYOUT, 16), head, output_size=(32, 32)).eval()
    assert model(feats(2)).shape == (2, 3, 32, 32)


def test_multilabel_training_step_and_metrics() -> None:
    model = DifuserModel(GWFuser(LAYOUT, 8), ClassificationHead(8, 4))
    module = DifuserModule(model, "multilabel", 4, FitConfig())
    targets = (torch.rand(6, 4) > 0.5).long()
    loss = module.training_step((feats(6), targets), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    data = [(feats(6), targets)]
    metrics = evaluate_model(model, data, "multilabel", ("a", "b", "c", "d"))  # type: ignore[arg-type]
    assert set(metrics) == {"map", "macro_f1", "micro_f1"} and 0 <= metrics["map"] <= 1


class _Fixed(nn.Module):
    """Returns stored logits (a stand-in *model* whose predictions we choose; metrics are under test)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits[x]


def test_confusion_matrix_orientation_precision_recall() -> None:
    # true:  0 0 0 0 1 1 | pred: 0 0 0 1 1 1  -> class 0: recall 3/4, precision 3/3; class 1: recall 2/2, precision 2/3
    true = torch.tensor([0, 0, 0, 0, 1, 1])
    pred = torch.tensor([0, 0, 0, 1, 1, 1])
    logits = nn.functional.one_hot(pred, 2).float()
    loader = DataLoader(TensorDataset(torch.arange(6), true), batch_size=4)
    m = evaluate_model(_Fixed(logits), loader, "classification", ("a", "b"))  # type: ignore[arg-type]
    assert m["confusion_matrix"]["counts"] == [[3, 1], [0, 2]]
    assert m["confusion_matrix"]["rows"] == "true class"
    assert m["per_class"]["a"]["recall"] == 0.75 and m["per_class"]["a"]["precision"] == 1.0
    assert abs(m["per_class"]["b"]["precision"] - 2 / 3) < 1e-9 and m["per_class"]["b"]["recall"] == 1.0
    assert abs(m["accuracy"] - 5 / 6) < 1e-6


def test_segmentation_metrics_ignore_unlabelled_pixels() -> None:
    true = torch.tensor([[[0, 0], [1, 255]]])
    good = nn.functional.one_hot(torch.tensor([[[0, 0], [1, 0]]]), 2).permute(0, 3, 1, 2).float()
    bad = nn.functional.one_hot(torch.tensor([[[0, 0], [1, 1]]]), 2).permute(0, 3, 1, 2).float()
    loader = DataLoader(TensorDataset(torch.zeros(1, dtype=torch.long), true), batch_size=1)
    for logits in (good, bad):  # the prediction at the ignored pixel must not matter
        m = evaluate_model(_Fixed(logits), loader, "segmentation", ("clear", "cloud"), ignore_index=255)  # type: ignore[arg-type]
        assert m["miou"] == 1.0
        assert m["confusion_matrix"]["counts"] == [[2, 0], [0, 1]]
        assert len(m["per_class"]) == 2  # the no-data value is not a scored class
