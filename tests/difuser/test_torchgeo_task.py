"""difuse on a TorchGeo dataset by name (a fake LandCoverAI on disk, offline)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geosane.difuser import load_difuse_config, run_difuse
from geosane.errors import ConfigError, DataError

from ..analysis.conftest import write_fake_landcoverai

pytest.importorskip("torchgeo")


def _config(tmp_path: Path, model_dir: Path, task: str, decoder: str = "upernet") -> Path:
    config = tmp_path / "tg.yaml"
    config.write_text(
        "base: [difuser/landcoverai_moe.yaml]\n"
        f"backbone: {{model_dir: {model_dir}, image_size: 32, save_timesteps: [1, 21]}}\n"
        f"task: {task}\n"
        "fuser: {width: 16, num_experts: 3}\n"
        f"decoder: {{name: {decoder}, channels: 16}}\n"
        "train: {epochs: 1, batch_size: 8, progress: false}\n"
        f"output_dir: {tmp_path / 'run'}\ncache_dir: {tmp_path / 'cache'}\n"
    )
    return config


def test_difuse_reads_a_torchgeo_segmentation_set_with_its_own_splits(
    pixel_model_dir: Path, tmp_path: Path
) -> None:
    root = write_fake_landcoverai(tmp_path / "landcoverai")
    task = f"{{dataset: torchgeo, name: LandCoverAI, root: {root}, kind: segmentation, max_samples: 5}}"
    report = run_difuse(load_difuse_config(_config(tmp_path, pixel_model_dir, task)))
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert report["metric"] == "miou" and 0.0 <= report["test"] <= 1.0
    assert set(metrics["test"]["per_class"]) == {"Background", "Building", "Woodland", "Water", "Road"}


@pytest.mark.parametrize(
    ("task", "error", "message"),
    [
        (
            "{dataset: torchgeo, name: null, root: ROOT, kind: segmentation}",
            ConfigError,
            "task.dataset torchgeo needs task.name",
        ),
        (
            "{dataset: torchgeo, name: LandCoverAI, root: ROOT, kind: classification}",
            DataError,
            "task.kind: TorchGeo LandCoverAI is a segmentation dataset, not classification",
        ),
        (
            "{dataset: torchgeo, name: LandCoverAI, root: ROOT, kind: segmentation, train_scenes: [a]}",
            ConfigError,
            "task.train_scenes applies to csmask scenes",
        ),
    ],
)
def test_bad_torchgeo_tasks_are_refused_before_anything_is_written(
    pixel_model_dir: Path, tmp_path: Path, task: str, error: type[Exception], message: str
) -> None:
    root = write_fake_landcoverai(tmp_path / "landcoverai", per_split=(2, 2, 2))
    decoder = "linear" if "classification" in task else "upernet"
    cfg = load_difuse_config(_config(tmp_path, pixel_model_dir, task.replace("ROOT", str(root)), decoder))
    with pytest.raises(error, match=message):
        run_difuse(cfg)
    assert not (tmp_path / "run").exists()
