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
    for section in ("## prompt", "## cross-architecture", "| scratch |", "| generated-1 |", "| total |"):
        assert section in report
    for name in ("prompt", "cross-architecture"):
        compared = out / "compare" / name
        assert (compared / "results.csv").is_file() and (compared / "curves.png").stat().st_size > 0
        card = json.loads((out / "generated" / name / "model_card.json").read_text())
        assert card["candidates"][0]["proxy_score"] is not None  # ranked on the selection split
    assert len(json.loads((out / "zoo" / "manifest.json").read_text())["models"]) >= 4
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


def test_demo_config_overrides_and_unknown_keys() -> None:
    cfg = load_demo_config("quick", ["autoencoder.overrides.train.max_steps=7", "generate.top_k=1"])
    assert cfg.autoencoder.overrides["train"]["max_steps"] == 7 and cfg.generate.top_k == 1
    with pytest.raises(ConfigError, match=r"unknown config key 'generate\.topk'; did you mean 'generate\.top_k'\?"):
        load_demo_config("quick", ["generate.topk=1"])


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
