"""``geosane evaluate`` (zero-shot, per class) and the model-recorded normalization of task data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import segmentation_models_pytorch as smp
import torch

from geosane.data import Normalization
from geosane.downstream import DataConfig, load_task_data
from geosane.errors import ConfigError
from geosane.zoo import ArchSpec, LoadedModel, Zoo
from tests.conftest import run_cli

STATS = {"mean": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6], "std": [0.5] * 6}


def _csmask_config(root: Path, **kwargs: object) -> DataConfig:
    return DataConfig(kind="csmask", root=root, group_by="block", block_size=128, test_scenes=["landsat7"], **kwargs)


def test_auto_normalization_is_the_models_when_recorded(csmask_root: Path) -> None:
    recorded = Normalization(tuple(STATS["mean"]), tuple(STATS["std"]))
    data = load_task_data(_csmask_config(csmask_root), model_normalization=recorded)
    assert data.normalization == recorded
    assert load_task_data(_csmask_config(csmask_root)).normalization != recorded  # no record: dataset stats
    forced = load_task_data(_csmask_config(csmask_root, normalization="dataset"), model_normalization=recorded)
    assert forced.normalization != recorded


@pytest.mark.parametrize(
    ("normalization", "recorded", "message"),
    [
        ("model", None, "data.normalization=model: the initialization records no normalization"),
        ("auto", Normalization((0.0,) * 4, (1.0,) * 4), "normalization has 4 bands, the data has 6"),
    ],
)
def test_bad_normalization_requests(csmask_root: Path, normalization: str, recorded: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_task_data(_csmask_config(csmask_root, normalization=normalization), model_normalization=recorded)


def _unet_zoo(root: Path, classes: int) -> str:
    torch.manual_seed(0)
    kwargs = {"encoder_name": "resnet18", "in_channels": 6, "classes": classes}
    model = smp.create_model("Unet", encoder_weights=None, **kwargs)
    zoo = Zoo.create(root)
    zoo.add(LoadedModel("local", model.state_dict(), ArchSpec("smp", "Unet", kwargs),
                        {"metadata": {"normalization": STATS}}), model_id="unet")  # fmt: skip
    return f"zoo:{root}#unet"


def test_evaluate_reports_every_class_and_writes_only_where_asked(
    csmask_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = _unet_zoo(tmp_path / "zoo", classes=3)
    args = ["evaluate", "csmask", "--init", source, "--data", str(csmask_root)]
    code, out, err = run_cli(capsys, *args, "--json", "--out", str(tmp_path / "eval"))
    assert code == 0, err
    result = json.loads(out)
    assert result["classes"] == ["clear", "cloud", "shadow"] and result["normalization"] == "model"
    assert len(result["per_class"]["test"]) == 3 and 0.0 <= result["scores"]["test"] <= 1.0
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["scores"] == result["scores"]
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    code, _, err = run_cli(capsys, *args, "--out", str(tmp_path / "mine"))
    assert code == 2 and "notes.txt" in " ".join(err.split())
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("head", "its head does not fit the task's 3 classes ('segmentation_head.0.weight' has shape (2, 16, 3, 3))"),
        ("scratch", "evaluate needs trained weights (init), not scratch"),
    ],
)
def test_evaluate_bad_input_writes_nothing(
    csmask_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    source = _unet_zoo(tmp_path / "zoo", classes=2) if case == "head" else "scratch"
    code, _, err = run_cli(
        capsys, "evaluate", "csmask", "--init", source, "--data", str(csmask_root),
        "--out", str(tmp_path / "eval"),
    )  # fmt: skip
    assert code == 2 and message in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "eval").exists()
