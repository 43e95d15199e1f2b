"""DiffusionSat SatUNet: a local checkpoint in the published layout, every key used, metadata fed."""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from geosane.config import from_dict
from geosane.difuser import BackboneConfig, DiffusionBackbone, FeatureCache
from geosane.difuser.backbone import find_unet_dir, load_unet, read_metadata_file
from geosane.difuser.satunet import SatUNet, diffusionsat_metadata, read_state_dict
from geosane.errors import ConfigError, SourceError, UnsafeCheckpointError

from .conftest import DIFFUSIONSAT_UNET_CONFIG, diffusionsat_state_dict

# DiffusionSat's notebook example (Brisbane, 2017-02-11, 0.41 m GSD, no clouds), normalised by its
# metadata_normalize: [925.8798, 345.2111, 411.4541, 0.0, 308.3333, 166.6667, 354.8387]
BRISBANE = {"longitude": 153.31676, "latitude": -27.861998, "gsd": 0.4114541, "cloud_cover": 0.0,
            "year": 2017, "month": 2, "day": 11}  # fmt: skip


def make_backbone(model_dir: Path, **overrides: object) -> DiffusionBackbone:
    data = {"model_dir": str(model_dir), "image_size": 16, "save_timesteps": [1, 21], **overrides}
    return DiffusionBackbone.from_config(from_dict(BackboneConfig, data))


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_metadata_normalisation_matches_diffusionsat() -> None:
    values = diffusionsat_metadata(**BRISBANE)
    expected = [925.8798, 345.2111, 411.4541, 0.0, 308.3333, 166.6667, 354.8387]
    assert values == pytest.approx(expected, abs=1e-3)
    with pytest.raises(
        ConfigError, match=r"cloud_cover = 25.0 is out of range \(expected a fraction in \[0, 1\]\)"
    ):
        diffusionsat_metadata(**{**BRISBANE, "cloud_cover": 25.0})


@pytest.mark.parametrize("fixture", ["diffusionsat_dir", "diffusionsat_bin_dir"])
def test_published_layout_loads_every_key(fixture: str, request: pytest.FixtureRequest) -> None:
    model_dir: Path = request.getfixturevalue(fixture)
    unet_dir, class_name = find_unet_dir(model_dir)
    assert class_name == "SatUNet"
    weights = next(unet_dir.glob("diffusion_pytorch_model.*"))
    stored = read_state_dict(weights)
    unet = load_unet(unet_dir, class_name)
    assert isinstance(unet, SatUNet) and unet.num_metadata == 7
    loaded = unet.state_dict()
    assert list(loaded) == list(diffusionsat_state_dict())  # same keys, same order, nothing dropped or added
    assert set(loaded) == set(stored)
    if weights.suffix == ".bin":  # a pickle keeps the published order (safetensors sorts its keys)
        assert list(stored) == list(loaded)
    keys = list(loaded)
    assert keys.index("time_embedding.linear_2.bias") < keys.index("metadata_embedding.0.linear_1.weight")
    first_down = next(k for k in keys if k.startswith("down_blocks."))
    assert keys.index("metadata_embedding.6.linear_2.bias") + 1 == keys.index(first_down)
    for key, value in stored.items():
        assert torch.equal(loaded[key], value), key
    md_keys = [k for k in stored if k.startswith("metadata_embedding.")]
    assert len(md_keys) == 7 * 4 and "metadata_embedding.6.linear_2.bias" in md_keys
    assert loaded["metadata_embedding.3.linear_1.weight"].shape == (32, 8)  # TimestepEmbedding(8, 32)


def test_metadata_changes_the_features(diffusionsat_dir: Path) -> None:
    base = make_backbone(diffusionsat_dir, conditioning={"satellite": BRISBANE})
    assert base._metadata is not None and base._metadata.shape == (1, 7)
    a = base.extract(images())[21]
    again = base.extract(images())[21]
    moved = make_backbone(diffusionsat_dir, conditioning={"satellite": {**BRISBANE, "latitude": 40.0}})
    b = moved.extract(images())[21]
    null = make_backbone(diffusionsat_dir, conditioning={"metadata": [0.0] * 7}).extract(images())[21]
    for name in ("up0_res0", "up1_attn0"):
        assert torch.equal(a[name], again[name])
        assert not torch.allclose(a[name], b[name], atol=1e-5)
        assert not torch.allclose(a[name], null[name], atol=1e-5)
    # per-image rows: row i gives image i the same features as the config value would
    rows = torch.tensor(
        [diffusionsat_metadata(**BRISBANE), diffusionsat_metadata(**{**BRISBANE, "latitude": 40.0})]
    )
    mixed = base.extract(images(), metadata=rows)[21]["up0_res0"]
    assert torch.allclose(mixed[0], a["up0_res0"][0], atol=1e-5)
    assert torch.allclose(mixed[1], b["up0_res0"][1], atol=1e-5)
    # the SatUNet forward is DiffusionSat's: emb = time MLP + sum_i metadata MLP_i(time_proj(value_i))
    unet = base.unet
    md = torch.tensor([diffusionsat_metadata(**BRISBANE)])
    proj = unet.time_proj(md.view(-1)).view(1, 7, -1)
    manual = sum(unet.metadata_embedding[i](proj[:, i]) for i in range(7))
    assert torch.allclose(unet.embed_metadata(md, torch.float32), manual)


def test_missing_metadata_is_refused_naming_what_the_model_expects(diffusionsat_dir: Path) -> None:
    with pytest.raises(ConfigError) as err:
        make_backbone(diffusionsat_dir)
    message = str(err.value)
    assert (
        "SatUNet embeds 7 metadata values (longitude, latitude, gsd, cloud_cover, year, month, day)"
        in message
    )
    assert "backbone.conditioning.satellite" in message
    partial = {k: v for k, v in BRISBANE.items() if k not in ("gsd", "day")}
    with pytest.raises(ConfigError, match=r"backbone\.conditioning\.satellite is missing gsd, day"):
        make_backbone(diffusionsat_dir, conditioning={"satellite": partial})
    with pytest.raises(ConfigError, match=r"conditioning\.metadata has 3 values; this SatUNet expects 7"):
        make_backbone(diffusionsat_dir, conditioning={"metadata": [1.0, 2.0, 3.0]})
    unet = make_backbone(diffusionsat_dir, conditioning={"metadata": [0.0] * 7}).unet
    with pytest.raises(ConfigError, match="none were given"):
        unet(torch.zeros(1, 4, 8, 8), 1, torch.zeros(1, 1, 12))


def test_satellite_metadata_needs_a_satunet(latent_model_dir: Path) -> None:
    with pytest.raises(
        ConfigError, match="need a DiffusionSat SatUNet with a metadata embedding; this UNet has none"
    ):
        make_backbone(latent_model_dir, conditioning={"satellite": BRISBANE})


def test_mismatched_keys_name_the_first_missing_and_unexpected(
    tmp_path: Path, diffusionsat_dir: Path
) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(diffusionsat_dir, bad)
    path = bad / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(path))
    state["metadata_embedding.7.linear_1.weight"] = state.pop("metadata_embedding.0.linear_1.weight")
    from safetensors.torch import save_file

    save_file(state, str(path))
    with pytest.raises(SourceError) as err:
        make_backbone(bad, conditioning={"satellite": BRISBANE})
    message = str(err.value)
    assert (
        "missing 'metadata_embedding.0.linear_1.weight' (1 missing), "
        "unexpected 'metadata_embedding.7.linear_1.weight' (1 unexpected)" in message
    )
    # a config that disagrees with the weights (6 metadata values declared, 7 stored)
    config = dict(DIFFUSIONSAT_UNET_CONFIG, num_metadata=6)
    (bad / "unet" / "config.json").write_text(json.dumps(config))
    save_file(diffusionsat_state_dict(), str(path))
    with pytest.raises(SourceError, match=r"unexpected 'metadata_embedding\.6\.linear_1\.bias' \(4 unexpected\)"):
        make_backbone(bad, conditioning={"metadata": [0.0] * 6})


class _Payload:
    """Unpickling this runs a shell command that creates ``path``: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.path}",))


def test_pickle_with_code_is_refused_unrun(
    tmp_path: Path, diffusionsat_bin_dir: Path, tiny_image_folder: Path
) -> None:
    from geosane.difuser import load_difuse_config, run_difuse

    bad = tmp_path / "evil"
    shutil.copytree(diffusionsat_bin_dir, bad)
    path = bad / "unet" / "diffusion_pytorch_model.bin"
    state = torch.load(path, weights_only=True)
    marker = tmp_path / "code-ran"
    state["extra"] = _Payload(marker)
    with open(path, "wb") as f:
        pickle.dump(state, f, protocol=2)
    with pytest.raises(UnsafeCheckpointError, match="not a weights-only checkpoint"):
        make_backbone(bad, conditioning={"satellite": BRISBANE})
    assert not marker.exists()
    overrides = [f"backbone.model_dir={bad}", f"task.root={tiny_image_folder}", "backbone.image_size=16",
                 "backbone.save_timesteps=[1,21]", f"output_dir={tmp_path / 'out'}", f"cache_dir={tmp_path / 'c'}"]  # fmt: skip
    with pytest.raises(UnsafeCheckpointError, match=r"refusing to load .*diffusion_pytorch_model\.bin"):
        run_difuse(load_difuse_config("difuser/diffusionsat_rsscn7_gw.yaml", overrides))
    assert not marker.exists() and not (tmp_path / "out").exists() and not (tmp_path / "c").exists()
    with open(path, "rb") as f:  # the payload is real: plain pickle would have run it
        pickle.load(f)
    assert marker.exists()
    # .ckpt holding {"state_dict": ...} (a training checkpoint) loads the same weights
    ckpt_dir = tmp_path / "ckpt"
    shutil.copytree(diffusionsat_bin_dir, ckpt_dir)
    (ckpt_dir / "unet" / "diffusion_pytorch_model.bin").unlink()
    torch.save({"state_dict": diffusionsat_state_dict(), "global_step": 3}, ckpt_dir / "unet" / "model.ckpt")
    unet = load_unet(*find_unet_dir(ckpt_dir))
    assert torch.equal(unet.state_dict()["metadata_embedding.0.linear_1.weight"],
                       diffusionsat_state_dict()["metadata_embedding.0.linear_1.weight"])  # fmt: skip


def test_per_image_metadata_file(tmp_path: Path, diffusionsat_dir: Path) -> None:
    csv = tmp_path / "meta.csv"
    header = "image,longitude,latitude,gsd,cloud_cover,year,month,day\n"
    csv.write_text(header + "a/1.png,153.3,-27.9,0.4,0.0,2017,2,11\nb/2.png,10.0,50.0,1.2,0.5,2020,7,1\n")
    values = read_metadata_file(csv, ["b/2.png", "a/1.png"])
    assert values.shape == (2, 7)
    assert values[0].tolist() == pytest.approx(
        diffusionsat_metadata(10.0, 50.0, 1.2, 0.5, 2020, 7, 1), rel=1e-6
    )
    with pytest.raises(ConfigError, match=r"has no row for 1 image\(s\) \(first: c/3.png\)"):
        read_metadata_file(csv, ["a/1.png", "c/3.png"])
    (tmp_path / "short.csv").write_text("image,longitude\na/1.png,1\n")
    with pytest.raises(ConfigError, match="lacks column"):
        read_metadata_file(tmp_path / "short.csv", ["a/1.png"])
    backbone = make_backbone(diffusionsat_dir, conditioning={"metadata_file": str(csv)})
    assert backbone._metadata is None  # every extract() call brings its rows
    x = images(2)
    cache = FeatureCache(tmp_path / "cache", backbone, x, "d", metadata=values).build(progress=False)
    direct = backbone.extract(x, metadata=values)
    assert torch.allclose(cache.load(1)["t21/up0_res0"], direct[21]["up0_res0"][1], atol=2e-3)
    other = FeatureCache(tmp_path / "cache", backbone, x, "d", metadata=values.flip(0))
    assert other.key != cache.key
    with pytest.raises(ConfigError, match="extract\\(\\) was called without it"):
        backbone.extract(x)


def test_prompt_without_transformers_names_the_extra(tmp_path: Path, diffusionsat_dir: Path) -> None:
    try:
        import transformers  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("transformers is installed: the prompt path is tested in test_backbone.py")
    model_dir = tmp_path / "sat"
    shutil.copytree(diffusionsat_dir, model_dir)
    (model_dir / "text_encoder").mkdir()
    (model_dir / "tokenizer").mkdir()
    with pytest.raises(ConfigError, match=r"pip install 'geosane\[difuser\]'"):
        make_backbone(model_dir, conditioning={"prompt": "A satellite image", "satellite": BRISBANE})


def test_difuse_on_diffusionsat_with_per_image_metadata(
    diffusionsat_bin_dir: Path, tiny_image_folder: Path, tmp_path: Path
) -> None:
    from geosane.difuser import load_difuse_config, run_difuse

    rows = ["image,longitude,latitude,gsd,cloud_cover,year,month,day"]
    for i, path in enumerate(sorted(tiny_image_folder.rglob("*.png"))):
        rows.append(
            f"{path.relative_to(tiny_image_folder).as_posix()},{i * 7 - 80},{i - 10},0.5,0.1,2018,{i % 12 + 1},3"
        )
    csv = tmp_path / "meta.csv"
    csv.write_text("\n".join(rows) + "\n")
    config = tmp_path / "sat.yaml"
    config.write_text(
        "base: [difuser/fuser/moe.yaml, difuser/decoder/linear.yaml, difuser/task/rsscn7.yaml]\n"
        f"backbone: {{model_dir: {diffusionsat_bin_dir}, image_size: 16, save_timesteps: [1, 21], "
        f"layer_idxs: [up1_attn0, up0_res0], conditioning: {{metadata_file: {csv}}}}}\n"
        "fuser: {width: 16, num_experts: 3, warmup_steps: 2}\n"
        f"task: {{root: {tiny_image_folder}, fractions: {{train: 0.5, select: 0.25, test: 0.25}}}}\n"
        "train: {epochs: 2, batch_size: 4, warmup_epochs: 1, progress: false}\n"
        f"output_dir: {tmp_path / 'out'}\ncache_dir: {tmp_path / 'cache'}\n"
    )
    report = run_difuse(load_difuse_config(config))
    assert 0.0 <= report["test"] <= 1.0 and report["fuser"] == "moe"
    # the model without metadata is refused before anything is written
    with pytest.raises(ConfigError, match="SatUNet embeds 7 metadata values"):
        run_difuse(
            load_difuse_config(
                config, ["backbone.conditioning.metadata_file=null", f"output_dir={tmp_path / 'x'}"]
            )
        )
    assert not (tmp_path / "x").exists()
    # a CSV missing an image is refused before anything is written
    csv.write_text("\n".join(rows[:-1]) + "\n")
    with pytest.raises(ConfigError, match=r"has no row for 1 image\(s\) \(first: gamma/07.png\)"):
        run_difuse(load_difuse_config(config, [f"output_dir={tmp_path / 'y'}"]))
    assert not (tmp_path / "y").exists()


def test_shipped_diffusionsat_config_feeds_null_metadata_and_satellite_needs_it_cleared() -> None:
    from geosane.difuser import load_difuse_config

    cfg = load_difuse_config("difuser/diffusionsat_rsscn7_gw.yaml")
    assert cfg.backbone.conditioning.metadata == [0.0] * 7 and cfg.fuser.moe_variant == "reference"
    sat = "backbone.conditioning.satellite={longitude: 1, latitude: 2, gsd: 0.5, cloud_cover: 0, year: 2020, month: 1, day: 1}"
    with pytest.raises(ConfigError, match=r"not both \(set conditioning\.metadata=null to use satellite\)"):
        load_difuse_config("difuser/diffusionsat_rsscn7_gw.yaml", [sat])
    cfg = load_difuse_config(
        "difuser/diffusionsat_rsscn7_gw.yaml", [sat, "backbone.conditioning.metadata=null"]
    )
    assert cfg.backbone.conditioning.satellite is not None and cfg.backbone.conditioning.satellite.gsd == 0.5


def test_layers_command_lists_satunet_layers(
    diffusionsat_bin_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from geosane.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["difuse", "layers", str(diffusionsat_bin_dir)])
    assert exit_info.value.code in (0, None)
    names = capsys.readouterr().out.split()
    assert names == ["up0_res0", "up0_res1", "up1_res0", "up1_res1", "up1_attn0", "up1_attn1"]


def test_training_output_layout_with_unet_in_a_checkpoint_dir(
    tmp_path: Path, diffusionsat_bin_dir: Path
) -> None:
    """DiffusionSat's train_text_to_image output: pipeline parts at the top, the UNet in checkpoint-<step>/unet."""
    model_dir = tmp_path / "finetune_sd21_sn-satlas-fmow_snr5_md7norm_bs64"
    shutil.copytree(diffusionsat_bin_dir, model_dir)
    (model_dir / "checkpoint-150000").mkdir()
    (model_dir / "unet").rename(model_dir / "checkpoint-150000" / "unet")
    with pytest.raises(SourceError) as err:
        make_backbone(model_dir, conditioning={"satellite": BRISBANE})
    assert "it holds checkpoint-150000/unet: set backbone.unet_dir=" in str(err.value)
    backbone = make_backbone(
        model_dir,
        unet_dir=str(model_dir / "checkpoint-150000" / "unet"),
        conditioning={"satellite": BRISBANE},
    )
    assert (
        isinstance(backbone.unet, SatUNet) and backbone.vae is not None
    )  # the VAE still comes from model_dir
    reference = make_backbone(diffusionsat_bin_dir, conditioning={"satellite": BRISBANE})
    assert torch.equal(
        backbone.extract(images())[21]["up0_res0"], reference.extract(images())[21]["up0_res0"]
    )
    assert any(
        "checkpoint-150000/unet/diffusion_pytorch_model.bin" in f[0] for f in backbone.fingerprint()["files"]
    )


def test_sharded_weights_and_shape_mismatch(tmp_path: Path, diffusionsat_dir: Path) -> None:
    from safetensors.torch import save_file

    sharded = tmp_path / "sharded"
    shutil.copytree(diffusionsat_dir, sharded)
    unet_dir = sharded / "unet"
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    state = diffusionsat_state_dict()
    keys = list(state)
    halves = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2 :]}  # fmt: skip
    for name, part in halves.items():
        save_file({k: state[k].contiguous() for k in part}, str(unet_dir / name))
    weight_map = {k: name for name, part in halves.items() for k in part}
    (unet_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"weight_map": weight_map})
    )
    unet = load_unet(*find_unet_dir(sharded))
    assert all(torch.equal(unet.state_dict()[k], state[k]) for k in keys)
    # a tensor of the wrong shape is named with both shapes
    bad = dict(state, **{"metadata_embedding.2.linear_1.weight": torch.zeros(32, 9)})
    for name in halves:
        (unet_dir / name).unlink()
    (unet_dir / "diffusion_pytorch_model.safetensors.index.json").unlink()
    save_file(
        {k: v.contiguous() for k, v in bad.items()}, str(unet_dir / "diffusion_pytorch_model.safetensors")
    )
    with pytest.raises(
        SourceError,
        match=r"'metadata_embedding\.2\.linear_1\.weight' has shape \(32, 9\), the model's config expects \(32, 8\)",
    ):
        load_unet(*find_unet_dir(sharded))
