"""Config composition order and the CLI's bad-input handling (message, exit 2, nothing written)."""

from __future__ import annotations

from pathlib import Path

import pytest

from geosane.cli import main
from geosane.config import PACKAGED_CONFIGS
from geosane.difuser import load_difuse_config, load_pretrain_config
from geosane.errors import ConfigError


def test_composition_order_bases_then_experiment_then_overrides(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text("fuser: {width: 64, name: gw}\ntrain: {epochs: 3, lr: 0.5}\n")
    (tmp_path / "b.yaml").write_text("fuser: {width: 32}\n")
    (tmp_path / "exp.yaml").write_text(
        "base: [a.yaml, b.yaml, difuser/decoder/linear.yaml]\n"
        "backbone: {model_dir: /m}\ntask: {root: /d}\ntrain: {epochs: 5}\n"
    )
    cfg = load_difuse_config(tmp_path / "exp.yaml")
    assert cfg.fuser.width == 32  # the later base wins over the earlier one
    assert cfg.fuser.name == "gw"  # keys only the earlier base sets survive
    assert cfg.train.epochs == 5 and cfg.train.lr == 0.5  # the experiment wins over its bases
    cfg = load_difuse_config(tmp_path / "exp.yaml", ["train.epochs=7", "fuser.name=moe"])
    assert cfg.train.epochs == 7 and cfg.fuser.name == "moe"  # command-line overrides win last


def test_packaged_experiments_compose() -> None:
    moe = load_difuse_config(PACKAGED_CONFIGS / "difuser" / "rsscn7_moe.yaml")
    assert (moe.fuser.name, moe.fuser.top_k, moe.decoder.name, moe.task.kind) == ("moe", 2, "linear", "classification")
    assert moe.backbone.image_size == 32 and moe.fuser.width == 384
    seg = load_difuse_config(PACKAGED_CONFIGS / "difuser" / "csmask_moe.yaml")
    assert seg.backbone.image_size == 64  # experiment overrides the backbone base
    assert (seg.decoder.name, seg.decoder.channels, seg.task.dataset) == ("upernet", 512, "csmask")
    for name in ("rsscn7_gw", "rsscn7_lw", "diffusionsat_rsscn7_gw"):
        assert load_difuse_config(PACKAGED_CONFIGS / "difuser" / f"{name}.yaml").task.root is not None


def test_packaged_config_names_resolve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # not the repository root: names must resolve to the shipped files
    by_path = load_difuse_config(PACKAGED_CONFIGS / "difuser" / "rsscn7_lw.yaml")
    assert load_difuse_config("difuser/rsscn7_lw.yaml") == by_path == load_difuse_config("rsscn7_lw")
    with pytest.raises(ConfigError, match=r"config file not found: rsscn7_xx \(packaged difuser configs: .*rsscn7_gw"):
        load_difuse_config("rsscn7_xx")
    assert load_pretrain_config("difuser/pretrain/ddpm_rsscn7.yaml").image_size == 32


def _experiment(tmp_path: Path, model_dir: Path, folder: Path) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(
        "base: [difuser/fuser/moe.yaml, difuser/decoder/linear.yaml]\n"
        f"backbone: {{model_dir: {model_dir}, image_size: 16, save_timesteps: [1, 21]}}\n"
        f"task: {{root: {folder}, fractions: {{train: 0.5, select: 0.25, test: 0.25}}}}\n"
        f"output_dir: {tmp_path / 'out'}\ncache_dir: {tmp_path / 'cache'}\n"
    )
    return path


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("fuser.top_k=9", "fuser.top_k (9) is larger than fuser.num_experts (8)"),
        ("backbone.save_timesteps=[1,30]", "save_timesteps [30] not in the 50-step DDIM schedule"),
        ("backbone.layer_idxs=[up0_res*,up3_conv]", "valid layers: up0_res0, up0_res1, up0_attn0"),
    ],
)
def test_bad_input_exits_2_and_writes_nothing(
    tmp_path: Path, pixel_model_dir: Path, tiny_image_folder: Path, capsys: pytest.CaptureFixture[str],
    override: str, message: str,
) -> None:
    config = _experiment(tmp_path, pixel_model_dir, tiny_image_folder)
    with pytest.raises(SystemExit) as exit_info:
        main(["difuse", str(config), override])
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "error:" in err and message in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


def test_layers_command_lists_hook_names(pixel_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["difuse", "layers", str(pixel_model_dir)])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.split() == ["up0_res0", "up0_res1", "up0_attn0", "up0_attn1", "up1_res0", "up1_res1"]
