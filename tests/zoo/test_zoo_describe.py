"""``geosane zoo describe SOURCE``: architecture, bands and normalisation of every source kind, offline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from tests.conftest import run_cli
from tests.zoo.test_zoo_sources import _fake_hf_cache, small_resnet

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _describe(capsys: pytest.CaptureFixture[str], source: str, *extra: str) -> dict:
    code, out, err = run_cli(capsys, "zoo", "describe", source, "--json", *extra)
    assert code == 0, err
    return json.loads(out)


@pytest.fixture
def cached_swin_v2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Swin_V2_T_Weights.SENTINEL2_MI_MS_SATLAS in torch hub's cache (TORCH_HOME under tmp), every
    download refused: describing it must read the cache only."""
    pytest.importorskip("torchgeo")
    from huggingface_hub import constants
    from torchgeo.models import get_weight

    from tests.zoo.test_torchgeo_models import published_checkpoint

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # downloads allowed, yet none may happen

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("zoo describe downloaded cached weights")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    name = "Swin_V2_T_Weights.SENTINEL2_MI_MS_SATLAS"
    weights = get_weight(name)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(published_checkpoint(weights), cache / Path(weights.url).name)
    return name


def test_describe_torchgeo_from_cache(capsys, cached_swin_v2):
    row = _describe(capsys, f"torchgeo:{cached_swin_v2}")
    assert row["arch"] == {"library": "torchgeo", "name": "swin_v2_t", "kwargs": {"in_chans": 9}}
    assert row["family"] == "swin_v2" and row["task"] == "backbone" and row["in_chans"] == 9
    assert row["bands"] == ["B04", "B03", "B02", "B05", "B06", "B07", "B08", "B11", "B12"]
    assert row["normalization"]["mean"] == [0.0] * 9
    assert row["normalization"]["std"] == [255.0] * 3 + [8160.0] * 6
    assert row["resize"] == ["CenterCrop([256, 256])"]
    assert row["num_params"] > 27_000_000 and row["dtypes"] == ["float32", "int64"]
    code, _, err = run_cli(capsys, "zoo", "describe", f"torchgeo:{cached_swin_v2}")  # the table (stderr)
    assert code == 0 and "torchgeo:swin_v2_t" in err and "8160" in err and "B11" in err


def test_describe_zoo_member_keeps_bands_and_normalisation(capsys, cached_swin_v2, tmp_path):
    zoo = tmp_path / "zoo"
    code, _, err = run_cli(capsys, "zoo", "add", f"torchgeo:{cached_swin_v2}", "--zoo", str(zoo))
    assert code == 0, err
    model_id = json.loads((zoo / "manifest.json").read_text())["models"][0]["id"]
    row = _describe(capsys, f"zoo:{zoo}#{model_id}")
    assert row["arch"]["library"] == "torchgeo" and row["bands"][-1] == "B12"
    assert row["normalization"]["std"][-1] == 8160.0 and row["family"] == "swin_v2"


def test_describe_timm_hf_and_local_file(capsys, tmp_path, monkeypatch):
    row = _describe(capsys, "timm:resnet18", "--random-init")
    assert row["arch"]["name"] == "resnet18" and row["family"] == "resnet" and row["task"] == "classification"
    assert row["normalization"] == "unknown" and row["bands_note"] == "unknown"
    assert row["num_params"] == sum(t.numel() for t in timm.create_model("resnet18").state_dict().values())

    from huggingface_hub import constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    save_file(small_resnet().state_dict(), str(tmp_path / "m.safetensors"))
    config = {"architecture": "resnet18", "num_classes": 5, "model_args": {"channels": [8, 8, 16, 16]}}
    _fake_hf_cache(
        cache,
        "someorg/tiny-resnet",
        {
            "model.safetensors": (tmp_path / "m.safetensors").read_bytes(),
            "config.json": json.dumps(config).encode(),
            "README.md": b"---\nlicense: cc-by-4.0\n---\n",
        },
    )
    row = _describe(capsys, "hf:someorg/tiny-resnet")
    assert row["arch"]["name"] == "resnet18" and row["license"] == "cc-by-4.0" and row["num_classes"] == 5

    torch.save({"w": torch.zeros(3, 3)}, tmp_path / "plain.pt")
    row = _describe(capsys, str(tmp_path / "plain.pt"))
    assert row["arch"] is None and row["no_architecture"] == "unknown" and row["num_params"] == 9


def test_describe_bad_sources(capsys, tmp_path):
    code, out, err = run_cli(capsys, "zoo", "describe", str(tmp_path / "absent.pt"))
    assert code == 2 and "model file not found" in err and out == ""
    pytest.importorskip("torchgeo")
    code, _, err = run_cli(capsys, "zoo", "describe", "torchgeo:Aurora_Weights.HRES_T0_AURORA")
    assert code == 2 and "not supported: Aurora is a weather model" in err
    assert list(tmp_path.iterdir()) == []  # nothing written
