"""probe / cka / decoders feed each model the input normalisation its source records.

TorchGeo weights are written into torch hub's cache (offline) in their published layout (a timm
ResNet-18 state dict under the enum URL's file name), so ``torchgeo:ENUM`` goes through the real
resolver and its recorded ``metadata.input.normalization``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch

from geosane.analysis import CkaConfig, ProbeConfig, load_analysis_data, run_cka, run_decoders, run_probe
from geosane.analysis.features import extract_features
from geosane.analysis.models import ModelSpec, attach_normalization, load_backbone
from geosane.config import load_config
from geosane.data import Normalization, recorded_normalization
from geosane.errors import ConfigError, SourceError

from .conftest import torchgeo_file

pytest.importorskip("torchgeo")

SECO = "ResNet18_Weights.SENTINEL2_RGB_SECO"  # 3 bands, per-band statistics folded from 3 Normalize steps
MOCO13 = "ResNet18_Weights.SENTINEL2_ALL_MOCO"  # 13 bands, one value for all bands (std 10000)


@pytest.fixture
def torchgeo_cache(torch_hub_checkpoints: Path) -> None:
    from torchgeo.models import get_weight

    for enum in (SECO, MOCO13):
        model = timm.create_model("resnet18", in_chans=get_weight(enum).meta["in_chans"], num_classes=0)
        torch.save(model.state_dict(), torchgeo_file(torch_hub_checkpoints, enum))


def _settings(root: Path, out: Path, model: str, **data: object) -> dict:
    return {
        "data": {
            "root": str(root),
            "image_size": 32,
            "split": {"train": 0.5, "select": 0.2, "test": 0.3},
            **data,
        },
        "models": [{"source": f"torchgeo:{model}", "name": "seco", "layers": ["layer1"]}],
        "probe": {"methods": ["ridge"], "fractions": [1.0], "seeds": [0]},
        "output_dir": str(out),
        "progress": False,
    }


def test_recorded_raw_statistics_apply_to_raw_pixel_values() -> None:
    info = {
        "metadata": {"input": {"normalization": {"mean": [0.0], "std": [255.0], "units": "raw input values"}}}
    }
    norm = recorded_normalization(info)
    assert norm == Normalization((0.0,), (255.0,), raw=True)
    pixels = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    # raw: 255 / 255 = 1 (not (255 / 255) / 255, as statistics of [0, 1]-scaled pixels would give)
    assert torch.allclose(norm(pixels), torch.ones(1, 3, 2, 2))
    assert norm.for_bands(13) == Normalization((0.0,) * 13, (255.0,) * 13, raw=True)
    assert Normalization((0.0, 1.0), (1.0, 1.0)).for_bands(3) is None


def test_probe_uses_the_models_recorded_normalization(
    colour_folder: Path, tmp_path: Path, torchgeo_cache: None
) -> None:
    cfg = load_config(ProbeConfig, None, _settings(colour_folder, tmp_path / "auto", SECO))
    data = load_analysis_data(cfg.data, "classification")
    backbone = load_backbone(cfg.models[0])
    attach_normalization(backbone, data.normalization_choice, data.splits["train"].images)
    recorded = recorded_normalization(backbone.loaded.info)
    assert recorded is not None and recorded.raw and backbone.normalization == recorded
    assert backbone.inputs(data.normalization) == recorded != data.normalization  # not ImageNet's

    plain = load_backbone(cfg.models[0])
    attach_normalization(plain, "dataset", data.splits["train"].images)
    assert plain.normalization is None and plain.key != backbone.key  # the features are cached apart

    images = data.splits["train"].images[:4]
    seen = extract_features(backbone, images, data, ["layer1"], "mean")["layer1"]
    other = extract_features(plain, images, data, ["layer1"], "mean")["layer1"]
    assert not torch.allclose(seen, other)  # other inputs, other features
    assert run_probe(cfg).rows  # end to end with the recorded normalization


def test_normalization_model_needs_a_recorded_one(colour_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    settings = _settings(colour_folder, out, SECO, normalization="model")
    settings["models"] = [
        {"source": "timm:resnet10t", "random_init": True, "name": "r10", "layers": ["layer1"]}
    ]
    with pytest.raises(
        SourceError, match=r"data.normalization=model: model 'r10' records no input normalization"
    ):
        run_probe(load_config(ProbeConfig, None, settings))
    assert not out.exists()


def test_a_13_band_model_on_rgb_images_names_the_bands_it_expects(
    colour_folder: Path, fake_landcoverai: Path, tmp_path: Path, torchgeo_cache: None
) -> None:
    for mode in ("probe", "cka", "decoders"):
        out = tmp_path / mode
        settings = _settings(colour_folder, out, MOCO13)
        expected = r"takes 13 input bands \(B1, B2, B3, B4, B5, B6, B7, B8, B8a, B9, B10, B11, B12\) but the data has 3"
        with pytest.raises(SourceError, match=expected):
            if mode == "probe":
                run_probe(load_config(ProbeConfig, None, settings))
            elif mode == "cka":
                model = {"source": f"torchgeo:{MOCO13}"}
                run_cka(load_config(CkaConfig, None, {"data": settings["data"], "model_a": model, "model_b": model,
                                                      "output_dir": str(out), "progress": False}))  # fmt: skip
            else:
                settings.update(task="segmentation")
                settings["data"] = {"kind": "torchgeo", "dataset": "LandCoverAI", "root": str(fake_landcoverai),
                                    "image_size": 32}  # fmt: skip
                settings["decoders"] = {"names": ["linear"], "adaptations": ["frozen"], "fit": {"epochs": 1}}
                run_decoders(load_config(ProbeConfig, None, settings))
        assert not out.exists()


def test_per_band_statistics_of_other_bands_are_refused(colour_folder: Path) -> None:
    cfg = load_config(ProbeConfig, None, _settings(colour_folder, Path("unused"), SECO))
    data = load_analysis_data(cfg.data, "classification")
    backbone = load_backbone(ModelSpec(source="timm:resnet10t", random_init=True, name="r10"))
    backbone.loaded.info["metadata"] = {"input": {"normalization": {"mean": [1.0, 2.0], "std": [3.0, 4.0]}}}
    backbone.loaded.info["bands"] = ["VV", "VH"]
    with pytest.raises(
        SourceError, match=r"model 'r10' expects 2 input bands \(VV, VH\), normalised by its recorded"
    ):
        attach_normalization(backbone, "auto", data.splits["train"].images)
    with pytest.raises(ConfigError, match="initialization's normalization has 2 bands, the data has 3"):
        from geosane.data import choose_normalization

        choose_normalization(
            "model", data.splits["train"].images, recorded=recorded_normalization(backbone.loaded.info)
        )
