from __future__ import annotations

from pathlib import Path

import pytest
import torch
from sklearn.metrics import average_precision_score

from geosane.downstream import ArchConfig, DataConfig, FinetuneConfig, TaskConfig, finetune
from geosane.tasks import FitConfig, make_metric

# rasterio (inside TorchGeo readers) warns about its own Affine `*` operator
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


def test_multilabel_map_averages_the_labels_present_like_sklearn() -> None:
    g = torch.Generator().manual_seed(0)
    scores = torch.rand(8, 4, generator=g)
    target = torch.zeros(8, 4, dtype=torch.long)
    target[:4, 0] = 1
    target[3:, 1] = 1
    target[6, 2] = 1  # label 3 has no positive: no AP defined, left out of the mean
    metric = make_metric("multilabel", 4)
    metric.update(scores[:5], target[:5])
    metric.update(scores[5:], target[5:])
    expected = sum(average_precision_score(target[:, c], scores[:, c]) for c in range(3)) / 3
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)


def test_finetune_multilabel_bigearthnet_layout(fake_bigearthnet: Path, tmp_path: Path) -> None:
    pytest.importorskip("torchgeo")
    config = FinetuneConfig(
        init="scratch",
        arch=ArchConfig(name="test_resnet"),
        data=DataConfig(kind="torchgeo", dataset="bigearthnet", root=fake_bigearthnet, image_size=32),
        task=TaskConfig(kind="multilabel"),
        train=FitConfig(epochs=1, batch_size=6),
        out=tmp_path / "ben",
    )
    result = finetune(config, show_progress=False)
    assert result.metric == "map" and 0.0 < result.test <= 1.0
    assert (tmp_path / "ben" / "weights.safetensors").is_file()
