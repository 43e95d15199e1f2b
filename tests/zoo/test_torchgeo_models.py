"""TorchGeo's own model classes (DOFA, CROMA, Scale-MAE, Copernicus-FM, Panopticon, EarthLoc, Swin)
through the real ``torchgeo:`` loader, offline.

For each weights enum a checkpoint is written with random values in the published key layout.
That the layout is TorchGeo's is proven by TorchGeo itself: its builder loads the checkpoint
with the real enum (``WeightsEnum.get_state_dict`` returns it) and its own asserts pass. The
file then sits in torch hub's cache under the enum URL's file name, ``torchgeo:ENUM`` is resolved
by geosane, and every tensor must be used and equal what TorchGeo loaded (after the documented
remapping); the keys TorchGeo tolerates as missing are the only ones filled, and are listed.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

pytest.importorskip("torchgeo")

from torchgeo.models import get_model, get_model_weights, get_weight, list_models
from torchvision.models._api import WeightsEnum

from geosane.arch import build_architecture
from geosane.arch.torchgeo_models import CROMA_GROUPS, TORCHGEO_MODELS, panopticon_pos_embed
from geosane.errors import SourceError
from geosane.zoo import resolve
from geosane.zoo.sources import torchgeo_arch
from tests.conftest import run_cli

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# one small builder per family runs by default; every enum of every builder with --runslow
DEFAULT_ENUMS = [
    "Swin_T_Weights.CITYSCAPES_SEMSEG",
    "Swin_V2_T_Weights.SENTINEL2_MI_MS_SATLAS",
    "DOFABase16_Weights.DOFA_MAE",
    "CopernicusFM_Base_Weights.CopernicusFM_ViT",
    "Panopticon_Weights.VIT_BASE14",
    "EarthLoc_Weights.SENTINEL2_RESNET50",
]


def _all_enums() -> list[str]:
    enums = []
    for builder in sorted(TORCHGEO_MODELS):
        enums.extend(str(w) for w in get_model_weights(builder))
    return enums


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """torch hub's cache under tmp (TORCH_HOME), downloads off: nothing reaches the network."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


@pytest.fixture(autouse=True)
def _free_memory() -> Iterator[None]:
    yield
    gc.collect()


def _builder(weights: WeightsEnum) -> str:
    return next(m for m in list_models() if m in TORCHGEO_MODELS and get_model_weights(m) is type(weights))


def published_checkpoint(weights: WeightsEnum) -> Any:
    """A checkpoint for ``weights`` with random values in the layout TorchGeo's builder loads."""
    builder = _builder(weights)
    arch = torchgeo_arch(weights)
    assert arch is not None and arch.library == "torchgeo" and arch.name == builder
    model = build_architecture(arch)
    for p in model.parameters():  # random values that no initialisation would reproduce
        p.data.normal_()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if builder.startswith("croma"):
        return {
            g: {k.split(".", 1)[1]: v for k, v in state.items() if k.startswith(f"{g}.")}
            for g in CROMA_GROUPS
        }
    if builder == "panopticon_vitb14":
        inner = {k.removeprefix("model."): v for k, v in state.items()}
        inner["pos_embed"] = torch.randn(1, 1 + 37 * 37, 768)  # laid out for DINOv2's 518 px
        inner["mask_token"] = torch.randn(1, 768)
        return inner
    # the keys TorchGeo's loader tolerates as missing are not part of the publication
    backbone = {k: v for k, v in state.items() if k not in TORCHGEO_MODELS[builder].tolerated}
    if builder in ("swin_t", "swin_s", "swin_b"):  # SwinBackbone_Weights: backbone + BTC's level norms
        widths = [model.features[i][-1].norm1.normalized_shape[0] for i in (1, 3, 5, 7)]
        norms = torch.nn.ModuleList(torch.nn.LayerNorm(w) for w in widths)
        return {"state_dict": backbone, "feat_norms_state_dict": norms.state_dict()}
    return backbone


def _flat(published: Any) -> dict[str, torch.Tensor]:
    if "state_dict" in published:
        return dict(published["state_dict"])
    if all(isinstance(v, dict) for v in published.values()):
        return {f"{g}.{k}": v for g, sd in published.items() for k, v in sd.items()}
    return dict(published)


def check_enum(enum: str, torch_home: Path, build: bool = False) -> None:
    weights = get_weight(enum)
    builder = _builder(weights)
    published = published_checkpoint(weights)

    # TorchGeo's own builder accepts the layout (its asserts run on it)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: _copy(published))
        reference = {
            k: v.detach().clone() for k, v in get_model(builder, weights=weights).state_dict().items()
        }

    torch_home.mkdir(parents=True, exist_ok=True)
    torch.save(published, torch_home / Path(weights.url).name)
    flat = _flat(published)
    published = None  # free it before geosane loads the file
    gc.collect()
    loaded = resolve(f"torchgeo:{enum}")
    assert loaded.arch is not None and loaded.arch.library == "torchgeo" and loaded.arch.name == builder
    filled = loaded.info.get("filled_from_init", [])
    assert set(filled) <= TORCHGEO_MODELS[builder].tolerated
    assert set(loaded.state_dict) == set(reference)
    # every published tensor is used, and equals what TorchGeo itself loaded
    for key, value in loaded.state_dict.items():
        if key in filled:
            continue
        assert torch.equal(value, reference[key]), key
    if builder == "panopticon_vitb14":
        assert "mask_token" in flat and not any(k.endswith("mask_token") for k in loaded.state_dict)
        assert torch.equal(loaded.state_dict["model.pos_embed"], panopticon_pos_embed(flat["pos_embed"]))
        assert loaded.state_dict["model.pos_embed"].shape == (1, 257, 768)
        assert any("mask_token" in note for note in loaded.info["remapped"])
        used = {f"model.{k}" for k in flat if k not in ("mask_token", "pos_embed")}
    elif builder.startswith("croma"):
        used = set(flat)
    elif builder in ("swin_t", "swin_s", "swin_b"):
        used = set(flat)
        assert any(
            "feat_norms_state_dict" in note and "8 tensors" in note for note in loaded.info["remapped"]
        )
    else:
        used = set(flat)
        for key in used:  # published values kept bitwise (no remapping for these builders)
            assert torch.equal(loaded.state_dict[key], flat[key]), key
    assert used <= set(loaded.state_dict) and not (used & set(filled))
    assert set(loaded.state_dict) - used - {"model.pos_embed"} == set(filled)
    # bands and normalisation are stated
    inputs = loaded.info["metadata"]["input"]
    meta = weights.meta
    assert inputs["bands"] == (list(meta["bands"]) if meta.get("bands") else None)
    assert inputs["bands"] is not None or inputs["bands_note"]
    assert inputs["in_chans"] == (meta.get("in_chans") or TORCHGEO_MODELS[builder].in_chans)
    assert inputs["normalization"] == "unknown" or len(inputs["normalization"]["mean"]) >= 1
    if build:  # the record rebuilds the model and the tensors load into it strictly
        net = loaded.build()
        assert all(torch.equal(v, loaded.state_dict[k]) for k, v in net.state_dict().items())
        del net
    del loaded, reference, flat
    gc.collect()


def _copy(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _copy(v) for k, v in obj.items()}
    return obj.clone()


@pytest.mark.parametrize("enum", DEFAULT_ENUMS)
def test_torchgeo_model_loads_published_layout(enum: str, torch_home: Path) -> None:
    check_enum(enum, torch_home, build=True)


@pytest.mark.slow
@pytest.mark.parametrize("enum", _all_enums())
def test_every_torchgeo_enum_loads_published_layout(enum: str, torch_home: Path) -> None:
    check_enum(enum, torch_home)


def test_every_torchgeo_enum_has_an_architecture_but_aurora() -> None:
    import timm

    missing = []
    for builder in list_models():
        try:
            enums = list(get_model_weights(builder))
        except (KeyError, ValueError):
            continue
        for weights in enums:
            arch = torchgeo_arch(weights)
            if arch is None and builder != "aurora_swin_unet":
                missing.append(str(weights))
            if builder not in TORCHGEO_MODELS and builder != "unet" and builder != "aurora_swin_unet":
                assert timm.is_model(builder)
    assert missing == []
    # TorchGeo 0.8.1: 25 enums over the 13 builders of the table; Aurora's 7 stay out
    assert len([w for b in TORCHGEO_MODELS for w in get_model_weights(b)]) == 25
    assert all(torchgeo_arch(w) is None for w in get_model_weights("aurora_swin_unet"))


def test_swin_v2_stem_rebuilt_for_meta_bands() -> None:
    arch = torchgeo_arch(get_weight("Swin_V2_B_Weights.LANDSAT_MI_SATLAS"))
    assert arch is not None and arch.kwargs == {"in_chans": 11}
    with torch.device("meta"):
        net = build_architecture(arch)
    assert net.state_dict()["features.0.0.weight"].shape == (128, 11, 4, 4)
    b = torchgeo_arch(get_weight("Swin_B_Weights.CITYSCAPES_SEMSEG"))
    assert b is not None and b.kwargs == {"in_chans": 3, "window_size": 12}


def test_mismatched_checkpoint_names_first_missing_and_unexpected(
    torch_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    weights = get_weight("Swin_T_Weights.CITYSCAPES_SEMSEG")
    published = published_checkpoint(weights)
    published["state_dict"].pop("features.0.0.weight")
    published["state_dict"]["decode_head.conv_seg.weight"] = torch.zeros(19, 512, 1, 1)
    torch_home.mkdir(parents=True)
    torch.save(published, torch_home / Path(weights.url).name)
    zoo = tmp_path / "zoo"
    with pytest.raises(
        SourceError,
        match=r"torchgeo:Swin_T_Weights\.CITYSCAPES_SEMSEG: weights do not fit torchgeo:swin_t \{'in_chans': 3\}: "
        r"missing 'features\.0\.0\.weight' \(1 missing\), unexpected 'decode_head\.conv_seg\.weight' \(1 unexpected\)$",
    ):
        resolve(f"torchgeo:{weights}")
    code, _, err = run_cli(capsys, "zoo", "add", f"torchgeo:{weights}", "--zoo", str(zoo))
    assert code == 2 and "missing 'features.0.0.weight'" in err and not zoo.exists()


def test_panopticon_without_mask_token_is_refused(torch_home: Path) -> None:
    weights = get_weight("Panopticon_Weights.VIT_BASE14")
    published = published_checkpoint(weights)
    published.pop("mask_token")
    torch_home.mkdir(parents=True)
    torch.save(published, torch_home / Path(weights.url).name)
    with pytest.raises(SourceError, match=r"panopticon_vitb14_teacher\.pth: missing 'mask_token'"):
        resolve(f"torchgeo:{weights}")


def test_aurora_is_refused_with_the_reason(torch_home: Path) -> None:
    with pytest.raises(
        SourceError, match=r"Aurora_Weights\.HRES_T0_AURORA is not supported: Aurora is a weather model"
    ):
        resolve("torchgeo:Aurora_Weights.HRES_T0_AURORA")
    assert not torch_home.exists()  # refused before any download


def test_torchgeo_architecture_kwargs_are_checked() -> None:
    from geosane.arch import ArchSpec

    with pytest.raises(
        SourceError, match=r"torchgeo:swin_t: unknown architecture kwarg 'depth' \(allowed: in_chans\)"
    ):
        build_architecture(ArchSpec("torchgeo", "swin_t", {"depth": 3}))
    with pytest.raises(
        SourceError, match=r"torchgeo:aurora_swin_unet is not supported: Aurora is a weather model"
    ):
        build_architecture(ArchSpec("torchgeo", "aurora_swin_unet", {}))
    with pytest.raises(
        SourceError, match=r"unknown torchgeo architecture 'nope' \(known: copernicusfm_base, "
    ):
        build_architecture(ArchSpec("torchgeo", "nope", {}))


def test_normalisation_folded_from_torchgeo_transforms() -> None:
    from geosane.arch.torchgeo_models import describe_transforms

    earthloc = describe_transforms(get_weight("EarthLoc_Weights.SENTINEL2_RESNET50").transforms)
    norm = earthloc["normalization"]
    # /255 then ImageNet statistics: mean 255 * m, std 255 * s in raw 0-255 units
    assert norm["mean"] == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])
    assert norm["std"] == pytest.approx([0.229 * 255, 0.224 * 255, 0.225 * 255])
    assert earthloc["resize"] == ["Resize([320, 320])"]
    satlas = describe_transforms(get_weight("Swin_V2_T_Weights.SENTINEL2_MI_MS_SATLAS").transforms)
    assert satlas["normalization"]["std"] == [255.0] * 3 + [8160.0] * 6
    assert describe_transforms(get_weight("CROMABase_Weights.CROMA_VIT").transforms) == {
        "normalization": "unknown"
    }
    assert json.dumps(satlas)  # JSON-serialisable, for the zoo row


def test_torchgeo_record_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from geosane.arch import ArchSpec

    monkeypatch.setitem(__import__("sys").modules, "torchgeo.models", None)
    with pytest.raises(
        SourceError, match=r"torchgeo architectures need the optional TorchGeo extra: pip install"
    ):
        build_architecture(ArchSpec("torchgeo", "dofa_base_patch16_224", {}))
