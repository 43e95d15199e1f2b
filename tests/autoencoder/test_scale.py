"""``geosane bench scale`` on two small real timm models: figures, report, plot and resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geosane.autoencoder.scale import bench_scale, paper_window_flops
from tests.conftest import run_cli


def test_paper_preset_flops_match_six_n_per_token() -> None:
    """The counted FLOPs agree with the 6 * params * tokens rule (2 views of 256 tokens) within 15%."""
    estimate = paper_window_flops()
    assert estimate["params"] == 896_057_220 and estimate["window"] == 256
    rule = 6 * estimate["params"] * 2 * estimate["window"]
    assert 0.85 < estimate["flops_per_window"] / rule < 1.15


@pytest.mark.slow
def test_bench_scale_measures_reports_and_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "scale"
    result = bench_scale(out, ["test_resnet", "test_vit"], windows=50)
    rows = result["models"]
    assert [r["name"] for r in rows] == ["test_resnet", "test_vit"]
    for r in rows:
        assert r["params"] > 0 and r["model_bytes"] >= 4 * r["params"]
        assert r["tokenize_s"] > 0 and r["copy_s"] > 0 and r["windows_per_s"] > 0
        assert r["tokenize_peak_rss"] >= r["tokenize_base_rss"] > 0 and r["stream_peak_rss"] > 0
    assert rows[1]["store_models"] == 2 and rows[1]["store_bytes"] > rows[0]["store_bytes"]
    report = (out / "report.md").read_text()
    assert "| test_vit |" in report and "TFLOP per training window" in report
    assert (out / "scale.png").stat().st_size > 0 and not (out / "zoo").exists()  # synthetic data removed
    assert json.loads((out / "scale.json").read_text())["models"] == json.loads(json.dumps(rows))
    again = bench_scale(out, ["test_resnet", "test_vit"], windows=50)  # finished models are not redone
    assert again["models"] == json.loads(json.dumps(rows))

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    code, _, err = run_cli(capsys, "bench", "scale", "--out", str(mine), "--model", "test_resnet")
    assert code == 2 and "geosane did not write it" in err and [p.name for p in mine.iterdir()] == ["notes.txt"]
