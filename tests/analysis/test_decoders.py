"""`geosane probe --mode decoders` on csmask chips (real cloud/shadow scenes)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from geosane.analysis import ProbeConfig, run_decoders
from geosane.config import load_config
from geosane.errors import SourceError


def _config(csmask_root: Path, out: Path, names: list[str], epochs: int = 1, **data: object) -> ProbeConfig:
    return load_config(
        ProbeConfig,
        None,
        {
            "task": "segmentation",
            "data": {
                "kind": "csmask",
                "root": str(csmask_root),
                "chip_size": 32,
                "bands": [2, 1, 0],
                "test_scenes": ["landsat7"],
                "split": {"train": 0.8, "select": 0.2},
                "max_samples": 32,
                **data,
            },
            "models": [{"source": "timm:resnet10t", "random_init": True, "name": "r10"}],
            "decoders": {"names": names, "channels": 16, "fit": {"epochs": epochs, "batch_size": 16}},
            "output_dir": str(out),
            "progress": False,
        },
    )


def test_frozen_and_finetuned_linear_heads_then_resume(csmask_root: Path, tmp_path: Path) -> None:
    cfg = _config(csmask_root, tmp_path / "dec", ["linear"])
    result = run_decoders(cfg)
    assert [(r["decoder"], r["adaptation"]) for r in result.rows] == [
        ("linear", "frozen"),
        ("linear", "finetuned"),
    ]
    frozen, finetuned = result.rows
    assert frozen["trainable_params"] < finetuned["trainable_params"]  # only the head trains when frozen
    assert all(0.0 <= r["test"] <= 1.0 for r in result.rows) and result.trained == 2
    table = result.table_path.read_text()
    assert table.startswith(
        "| model | decoder | labels | frozen (test mIoU) | finetuned (test mIoU) | fine-tuning gain |"
    )
    assert result.plot_path.read_bytes()[:4] == b"\x89PNG"
    again = run_decoders(cfg)  # finished runs are read back, not retrained
    assert again.trained == 0 and again.resumed == 2 and again.rows == result.rows


def test_band_mismatch_is_reported_before_training(csmask_root: Path, tmp_path: Path) -> None:
    cfg = _config(csmask_root, tmp_path / "never", ["linear"], bands=None)
    with pytest.raises(SourceError, match="takes 3 input bands but the data has 6"):
        run_decoders(cfg)
    assert not (tmp_path / "never").exists()


@pytest.mark.slow
def test_all_three_heads_with_both_adaptations(csmask_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    result = run_decoders(_config(csmask_root, tmp_path / "all", ["linear", "upernet", "unet"], epochs=2))
    assert len(result.rows) == 6
    assert {(r["decoder"], r["adaptation"]) for r in result.rows} == {
        (d, a) for d in ("linear", "upernet", "unet") for a in ("frozen", "finetuned")
    }
    assert len(result.table_path.read_text().splitlines()) == 2 + 3
