"""``geosane zoo search/add/list/build`` from the command line."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.conftest import REPO_ROOT, run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    from geosane.console import console

    monkeypatch.setattr(console, "width", 300)  # tables are not truncated in captured output


def run(capsys, *args: str) -> tuple[int, str, str]:
    """``run_cli`` with the stderr whitespace collapsed (Rich wraps long messages)."""
    code, out, err = run_cli(capsys, *args)
    return code, out, " ".join(err.split())


@pytest.fixture
def weights(tmp_path) -> Path:
    path = tmp_path / "resnet.pt"
    torch.save(timm.create_model("resnet18", num_classes=4, channels=(8, 8, 16, 16)).state_dict(), path)
    return path


def test_add_records_row_and_readding_is_a_noop(tmp_path, capsys, weights):
    zoo = tmp_path / "zoo"
    code, _, err = run(
        capsys, "zoo", "add", str(weights), "--zoo", str(zoo), "--id", "my-resnet",
        "--arch", "timm:resnet18", "--arch-kwarg", "num_classes=4", "--arch-kwarg", "channels=[8, 8, 16, 16]",
        "--task", "classification", "--license", "mit", "--bands", "red,green,blue", "--modality", "rgb",
        "--meta", "accuracy=0.91", "--meta", "note=hand made",
    )  # fmt: skip
    assert code == 0, err
    assert "added my-resnet" in err
    row = json.loads((zoo / "manifest.json").read_text())["models"][0]
    assert row["id"] == "my-resnet" and row["family"] == "resnet" and row["license"] == "mit"
    assert row["arch"] == {
        "library": "timm",
        "name": "resnet18",
        "kwargs": {"num_classes": 4, "channels": [8, 8, 16, 16]},
    }
    assert row["bands"] == ["red", "green", "blue"] and row["in_chans"] == 3 and row["num_classes"] == 4
    assert row["metadata"] == {"accuracy": 0.91, "note": "hand made"}
    assert row["num_params"] == sum(t.numel() for t in torch.load(weights, weights_only=True).values())
    assert row["dtypes"] == ["float32", "int64"] and len(row["sha256"]) == 64
    before = (zoo / "manifest.json").read_bytes()

    safetensors_copy = tmp_path / "same.safetensors"
    save_file(torch.load(weights, weights_only=True), str(safetensors_copy))
    code, _, err = run(capsys, "zoo", "add", str(safetensors_copy), "--zoo", str(zoo))
    assert code == 0 and "skipped" in err and "already in the zoo as 'my-resnet' (same weights)" in err
    assert (zoo / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in (zoo / "models").iterdir()) == ["my-resnet.safetensors"]

    code, out, _ = run(capsys, "zoo", "list", "--zoo", str(zoo), "--json")
    rows = json.loads(out)
    assert code == 0 and [r["id"] for r in rows] == ["my-resnet"] and rows[0]["file_exists"]
    code, _, err = run(capsys, "zoo", "list", "--zoo", str(zoo))
    assert code == 0 and "my-resnet" in err and "0.910" in err


def _empty(tmp_path: Path) -> str:
    torch.save({}, tmp_path / "empty.pt")
    return str(tmp_path / "empty.pt")


def _nan(tmp_path: Path) -> str:
    sd = timm.create_model("resnet18", num_classes=2, channels=(8, 8, 16, 16)).state_dict()
    sd["bn1.weight"][0] = float("nan")
    save_file(sd, str(tmp_path / "nan.safetensors"))
    return str(tmp_path / "nan.safetensors")


def _truncated(tmp_path: Path, weights: Path) -> str:
    data = weights.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 3])
    return str(tmp_path / "cut.pt")


class _Trap:
    def __reduce__(self):
        return (os.system, ("touch /tmp/geosane-should-not-exist",))


def _unsafe(tmp_path: Path) -> str:
    (tmp_path / "evil.bin").write_bytes(pickle.dumps({"w": _Trap()}))
    return str(tmp_path / "evil.bin")


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_empty, r"empty\.pt: the state dict is empty"),
        (_nan, r"tensor 'bn1\.weight' holds NaN/Inf values \(1 of 64\); pass --allow-nonfinite"),
        ("truncated", r"corrupt or truncated checkpoint .*cut\.pt"),
        (
            _unsafe,
            r"refusing to load .*evil\.bin: it is not a weights-only checkpoint .* \(needs posix\.system\)",
        ),
        (lambda tmp: "nope:thing", r"unknown source scheme 'nope:'"),
        (lambda tmp: str(tmp / "absent.safetensors"), r"model file not found: .*absent\.safetensors"),
    ],
)
def test_bad_sources_exit_2_and_write_nothing(tmp_path, capsys, weights, make, message):
    import re

    source = _truncated(tmp_path, weights) if make == "truncated" else make(tmp_path)
    zoo = tmp_path / "zoo"
    code, out, err = run(capsys, "zoo", "add", str(weights), source, "--zoo", str(zoo))
    assert code == 2
    assert err.startswith("error:") and re.search(message, err), err
    assert "Traceback" not in err and out == ""
    assert not zoo.exists()  # the good first source was not written either
    assert not Path("/tmp/geosane-should-not-exist").exists()


def test_allow_nonfinite_flag(tmp_path, capsys):
    zoo = tmp_path / "zoo"
    code, _, err = run(capsys, "zoo", "add", _nan(tmp_path), "--zoo", str(zoo), "--allow-nonfinite")
    assert code == 0 and "added nan" in err


def test_list_flags_missing_weights_and_rejects_non_zoo(tmp_path, capsys, weights):
    zoo = tmp_path / "zoo"
    assert run(capsys, "zoo", "add", str(weights), "--zoo", str(zoo), "--id", "gone")[0] == 0
    (zoo / "models" / "gone.safetensors").unlink()
    code, out, _ = run(capsys, "zoo", "list", "--zoo", str(zoo), "--json")
    assert code == 0 and json.loads(out)[0]["file_exists"] is False
    code, _, err = run(capsys, "zoo", "list", "--zoo", str(zoo))
    assert code == 0 and "gone (file missing)" in err
    code, _, err = run(capsys, "zoo", "add", f"zoo:{zoo}#gone", "--zoo", str(tmp_path / "other"))
    assert code == 2 and "manifest row 'gone' points to missing file models/gone.safetensors" in err
    assert not (tmp_path / "other").exists()
    code, _, err = run(capsys, "zoo", "list", "--zoo", str(tmp_path))
    assert code == 2 and "is not a zoo (no manifest.json)" in err


def test_add_option_errors(tmp_path, capsys, weights):
    zoo = tmp_path / "zoo"
    code, _, err = run(capsys, "zoo", "add", str(weights), str(weights), "--zoo", str(zoo), "--id", "x")
    assert code == 2 and "--id names one model" in err
    code, _, err = run(capsys, "zoo", "add", str(weights), "--zoo", str(zoo), "--meta", "novalue")
    assert code == 2 and "--meta 'novalue' must look like key=value" in err
    code, _, err = run(capsys, "zoo", "add", str(weights), "--zoo", str(zoo), "--arch", "timm:not_a_model")
    assert code == 2 and "unknown timm architecture 'not_a_model'" in err
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "zoo", "add", str(weights), "--zoo", str(tmp_path / "file"))
    assert code == 2 and "exists and is not a directory" in err
    assert not zoo.exists()


def test_search_offline_is_one_clear_line(capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    code, out, err = run(capsys, "zoo", "search", "sentinel-2", "--tag", "land-cover", "--limit", "5")
    assert code == 2 and out == ""
    assert err == "error: cannot search the Hugging Face Hub: offline mode is on (HF_HUB_OFFLINE=1)"


def test_cli_process_exit_status_and_no_traceback(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "COLUMNS": "200", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "geosane", "zoo", "add", str(tmp_path / "missing.pt"), "--zoo", str(tmp_path / "z")],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert (
        result.stderr.strip().startswith("error: model file not found:") and "Traceback" not in result.stderr
    )
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "z").exists()


@pytest.mark.slow
def test_add_hf_repo_from_cache_with_offline_env(tmp_path, weights):
    """HF_HUB_OFFLINE=1 and HF_HUB_CACHE, as a user sets them: the cached repo is added."""
    from .test_zoo_sources import _fake_hf_cache

    sd = torch.load(weights, weights_only=True)
    save_file(sd, str(tmp_path / "m.safetensors"))
    config = {"architecture": "resnet18", "num_classes": 4, "model_args": {"channels": [8, 8, 16, 16]}}
    files = {
        "model.safetensors": (tmp_path / "m.safetensors").read_bytes(),
        "config.json": json.dumps(config).encode(),
        "README.md": b"---\nlicense: apache-2.0\n---\n",
    }
    _fake_hf_cache(tmp_path / "hf", "geo/resnet-tiny", files)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT / "src"),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_CACHE": str(tmp_path / "hf"),
    }
    result = subprocess.run(
        [sys.executable, "-m", "geosane", "zoo", "add", "hf:geo/resnet-tiny", "--zoo", str(tmp_path / "z")],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    row = json.loads((tmp_path / "z" / "manifest.json").read_text())["models"][0]
    assert row["id"] == "resnet-tiny" and row["source"] == "hf:geo/resnet-tiny" and row["license"] == "apache-2.0"
    assert row["arch"]["name"] == "resnet18" and row["family"] == "resnet" and row["num_classes"] == 4


@pytest.mark.slow
def test_search_unreachable_hub(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "HF_ENDPOINT": "http://127.0.0.1:9"}
    env.pop("HF_HUB_OFFLINE", None)
    result = subprocess.run(
        [sys.executable, "-m", "geosane", "zoo", "search", "sentinel"],
        capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: cannot search the Hugging Face Hub (ConnectError")
    assert "Traceback" not in result.stderr and "Retrying" not in result.stderr


def test_build_tiny_on_rsscn7_then_list_and_resume(tmp_path, capsys, rsscn7_root):
    zoo = tmp_path / "zoo"
    code, _, err = run(capsys, "zoo", "build", "tiny", "--zoo", str(zoo), f"dataset={rsscn7_root}")
    assert code == 0, err
    assert "5 members, 0 already" in err
    code, out, _ = run(capsys, "zoo", "list", "--zoo", str(zoo), "--json")
    rows = json.loads(out)
    assert len(rows) == 5 and len({r["family"] for r in rows}) >= 4
    by_id = {r["id"]: r for r in rows}
    for row in rows:
        meta = row["metadata"]
        assert 0.0 <= meta["accuracy"] <= 1.0 and meta["train_config"]["image_size"] == 32
        assert row["task"] == "classification" and row["num_classes"] == len(row["classes"])
        assert row["in_chans"] == len(row["bands"]) == row["arch"]["kwargs"]["in_chans"]
    assert (
        by_id["resnet-ft-c0"]["metadata"]["init_from"] == "resnet-base"
        and by_id["resnet-ft-c0"]["num_classes"] == 4
    )
    assert by_id["vit-s0"]["bands"] == ["red", "green"]
    chance = 1 / 7
    assert (
        max(r["metadata"]["accuracy"] for r in rows if r["num_classes"] == 7) > chance + 0.1
    )  # members learned

    code, _, err = run(capsys, "zoo", "build", "tiny", "--zoo", str(zoo), f"dataset={rsscn7_root}")
    assert code == 0 and "5 already" in err and "0 to train" in err
    # a member copied to another zoo keeps its description and weights
    code, _, err = run(capsys, "zoo", "add", f"zoo:{zoo}#vit-s0", "--zoo", str(tmp_path / "copy"))
    assert code == 0, err
    copied = json.loads((tmp_path / "copy" / "manifest.json").read_text())["models"][0]
    for key in ("id", "family", "bands", "classes", "arch", "sha256", "in_chans", "num_classes", "metadata"):
        assert copied[key] == by_id["vit-s0"][key], key
    code, _, err = run(
        capsys, "zoo", "build", "tiny", "--zoo", str(zoo), f"dataset={rsscn7_root}", "--dry-run"
    )
    assert code == 0 and err.count("done") == 5
