"""``geosane demo``: the quick end-to-end run (slow, CI) and its bad inputs (fast)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from geosane.config import expand_dotted
from geosane.demo import load_demo_config
from geosane.errors import ConfigError
from tests.conftest import REPO_ROOT, run_cli


@pytest.mark.slow
def test_quick_demo_on_rsscn7_runs_every_stage_and_resumes(rsscn7_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "demo"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "COLUMNS": "200"}
    args = [sys.executable, "-m", "geosane", "demo", "--quick", "--data", str(rsscn7_root), "--out", str(out)]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert str(out / "report.md") in " ".join((done.stdout + done.stderr).split())
    report = (out / "report.md").read_text()
    for section in ("# geosane demo", "## Case a", "## Case b", "| scratch (random init) |",
                    "| generated (rank 1 on select) |", "prompt + noise", "## Generator levers", "| total |"):  # fmt: skip
        assert section in report
    bench = out / "foundry"
    for name in ("a", "b"):
        compared = bench / "compare" / name
        assert (compared / "results.csv").is_file() and (compared / "curves.png").stat().st_size > 0
        card = json.loads((bench / "generated" / name / "model_card.json").read_text())
        assert card["candidates"][0]["proxy_score"] is not None  # ranked on the selection split
    assert len(json.loads((bench / "zoo" / "manifest.json").read_text())["models"]) >= 4
    # a rerun finds every stage done and only rewrites the report
    again = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0, again.stderr[-3000:]
    timings = json.loads((out / "timings.json").read_text())
    assert timings["autoencoder"] < 10 and timings["zoo build"] < 10


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "missing", "is not a directory; pass an image folder"),
        (lambda root: (root / "one" / "only").mkdir(parents=True) or root / "one", "needs at least two class"),
    ],
)
def test_unusable_data_is_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], make: object, message: str
) -> None:
    data = make(tmp_path)  # type: ignore[operator]
    out = tmp_path / "demo-out"
    code, _, err = run_cli(capsys, "demo", "--quick", "--data", str(data), "--out", str(out))
    assert code == 2 and message in " ".join(err.split())
    assert not out.exists()


def test_no_data_without_torchgeo_says_what_to_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import geosane.data.torchgeo

    monkeypatch.setattr(geosane.data.torchgeo, "torchgeo_available", lambda: False)
    out = tmp_path / "demo-out"
    code, _, err = run_cli(capsys, "demo", "--quick", "--out", str(out))
    err = " ".join(err.split())
    assert code == 2
    assert "needs TorchGeo" in err and "geosane demo --data ../shared/data/rsscn7" in err
    assert not out.exists()


def test_demo_config_overrides_and_unknown_keys(rsscn7_root: Path) -> None:
    from geosane.demo import bench_config

    cfg = load_demo_config("quick", ["overrides.budget.seeds=[0]", "overrides.autoencoder.train.max_steps=7"])
    bench = bench_config(cfg, rsscn7_root)
    assert bench.budget.seeds == [0] and bench.autoencoder["train.max_steps"] == 7
    assert bench.out == cfg.out / "foundry" and bench.data == rsscn7_root
    with pytest.raises(ConfigError, match=r"unknown config key 'bnch'; did you mean 'bench'\?"):
        load_demo_config("quick", ["bnch=demo"])
    with pytest.raises(ConfigError, match="bench preset 'nope' not found"):
        bench_config(load_demo_config("quick", ["bench=nope"]), rsscn7_root)


def test_expand_dotted_nests_top_level_keys_in_order() -> None:
    assert expand_dotted({"a.b": 1, "a.c": {"d": 2}, "e": 3, "a.b ": 4}) == {
        "a": {"b": 1, "c": {"d": 2}, "b ": 4},
        "e": 3,
    }
    assert expand_dotted({"x.y": 1, "x": {"y": 2}}) == {"x": {"y": 2}}  # later keys win


def test_offline_without_data_says_what_to_pass_and_leaves_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import geosane.data.torchgeo
    from geosane.errors import DataError

    def offline(name: str, root: Path, *args: object, **kwargs: object) -> None:
        Path(root).mkdir(parents=True)  # a download that started, then failed
        raise DataError(f"could not download EuroSAT into {root} (URLError: no network); offline? data.* hints")

    monkeypatch.setattr(geosane.data.torchgeo, "torchgeo_available", lambda: True)
    monkeypatch.setattr(geosane.data.torchgeo, "open_torchgeo", offline)
    out = tmp_path / "demo-out"
    code, _, err = run_cli(capsys, "demo", "--quick", "--out", str(out))
    err = " ".join(err.split())
    assert code == 2
    assert "EuroSAT could not be downloaded (could not download EuroSAT" in err and "URLError: no network" in err
    assert "data.* hints" not in err and "geosane demo --data ../shared/data/rsscn7" in err
    assert not out.exists()


def test_a_folder_with_too_few_classes_for_the_benchmark_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], tiny_image_folder: Path
) -> None:
    out = tmp_path / "demo-out"
    code, _, err = run_cli(capsys, "demo", "--quick", "--data", str(tiny_image_folder), "--out", str(out))
    assert code == 2 and "needs at least 7 class folders, it has 3" in " ".join(err.split())
    assert not out.exists()
