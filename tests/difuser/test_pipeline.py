"""End to end: DDPM pretraining (+ resume) -> diffusers directory -> cached features -> fuser + head."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from geosane.cli import main
from geosane.config import from_dict
from geosane.difuser import (
    BackboneConfig,
    DiffusionBackbone,
    PretrainConfig,
    load_difuse_config,
    pretrain_ddpm,
    run_difuse,
)
from geosane.errors import GeosaneError, Interrupted


def tiny_pretrain_config(folder: Path, out: Path, steps: int) -> PretrainConfig:
    return from_dict(
        PretrainConfig,
        {
            "data_root": str(folder),
            "fractions": {"train": 0.5, "select": 0.25, "test": 0.25},
            "image_size": 16,
            "block_out_channels": [8, 16],
            "attention_levels": [1],
            "norm_num_groups": 4,
            "attention_head_dim": 8,
            "steps": steps,
            "batch_size": 4,
            "warmup_steps": 1,
            "checkpoint_every": 2,
            "num_samples": 2,
            "output_dir": str(out),
        },
    )


def test_pretrain_writes_a_loadable_diffusers_dir_and_resumes(
    tiny_image_folder: Path, tmp_path: Path
) -> None:
    out = tmp_path / "ddpm"
    first = pretrain_ddpm(tiny_pretrain_config(tiny_image_folder, out, steps=3))
    assert first.steps == 3 and first.num_images == 12  # the train split only (half of 24)
    assert {p.name for p in first.model_dir.iterdir()} == {"model_index.json", "unet", "scheduler"}
    assert list((first.model_dir / "unet").glob("*.safetensors")) and not list(first.model_dir.rglob("*.bin"))
    assert (out / "samples.png").stat().st_size > 0
    with pytest.raises(GeosaneError, match="already holds a training run"):
        pretrain_ddpm(tiny_pretrain_config(tiny_image_folder, out, steps=3))
    resumed = pretrain_ddpm(tiny_pretrain_config(tiny_image_folder, out, steps=5), resume=True)
    assert resumed.steps == 5  # continued from step 3
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 5
    backbone = DiffusionBackbone.from_config(
        from_dict(
            BackboneConfig, {"model_dir": str(resumed.model_dir), "image_size": 16, "save_timesteps": [1, 21]}
        )
    )
    assert backbone.layer_names[0] == "up0_res0" and backbone.vae is None
    ema = load_file(str(resumed.model_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    assert torch.equal(ema["conv_in.weight"], backbone.unet.conv_in.weight)


def _write_experiment(tmp_path: Path, model_dir: Path, folder: Path, fuser: str, out: str) -> Path:
    path = tmp_path / f"{fuser}.yaml"
    path.write_text(
        f"base: [difuser/fuser/{fuser}.yaml, difuser/decoder/linear.yaml, difuser/task/rsscn7.yaml]\n"
        f"backbone: {{model_dir: {model_dir}, image_size: 16, save_timesteps: [1, 21], batch_size: 8}}\n"
        f"fuser: {{width: 16, warmup_steps: 2, num_experts: 3}}\n"
        f"task: {{root: {folder}, fractions: {{train: 0.5, select: 0.25, test: 0.25}}}}\n"
        "train: {epochs: 3, batch_size: 4, warmup_epochs: 1, progress: false}\n"
        f"output_dir: {tmp_path / out}\ncache_dir: {tmp_path / 'cache'}\n"
    )
    return path


def test_difuse_trains_reports_and_reuses_the_cache(
    pixel_model_dir: Path, tiny_image_folder: Path, tmp_path: Path
) -> None:
    config = _write_experiment(tmp_path, pixel_model_dir, tiny_image_folder, "gw", "gw")
    with pytest.raises(SystemExit) as exit_info:
        main(["difuse", str(config)])
    assert exit_info.value.code in (0, None)
    out = tmp_path / "gw"
    report = json.loads((out / "report.json").read_text())
    assert report["fuser"] == "gw" and 0.0 <= report["test"] <= 1.0 and report["epochs_run"] >= 1
    metrics = json.loads((out / "metrics.json").read_text())
    counts = torch.tensor(metrics["test"]["confusion_matrix"]["counts"])
    assert counts.shape == (3, 3) and counts.sum(dim=1).tolist() == [
        2,
        2,
        2,
    ]  # rows = true class, 2 test images each
    weights = json.loads((out / "fusion_weights.json").read_text())
    assert abs(sum(map(sum, weights["heatmap"])) - 1.0) < 1e-5 and len(weights["rows"]) == 2
    assert (out / "fusion_weights.png").stat().st_size > 0 and (out / "model.safetensors").is_file()

    files = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 24 * 2  # one file per (image, timestep)
    stamps = [f.stat().st_mtime_ns for f in files]
    moe = run_difuse(
        load_difuse_config(_write_experiment(tmp_path, pixel_model_dir, tiny_image_folder, "moe", "moe"))
    )
    assert sorted((tmp_path / "cache").rglob("*.safetensors")) == files  # same features: no UNet rerun
    assert [f.stat().st_mtime_ns for f in files] == stamps
    summary = json.loads((tmp_path / "moe" / "fusion_weights.json").read_text())
    assert (
        summary["optimizer_steps"] == 3 * moe["best_epoch"]
    )  # the best checkpoint's counter (3 steps/epoch)
    assert all(abs(sum(row) - 1.0) < 1e-5 for row in summary["heatmap"])


class _Interrupt(L.Callback):
    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: object, idx: int
    ) -> None:
        if trainer.current_epoch == 2 and idx == 1:
            raise KeyboardInterrupt


def test_interrupted_difuse_resumes_bitwise(
    pixel_model_dir: Path, tiny_image_folder: Path, tmp_path: Path
) -> None:
    """Ctrl-C mid-epoch, then --resume: the same history, metrics and weights as an uninterrupted run."""
    settings = ["train.patience=50", "train.epochs=4"]
    reference = run_difuse(
        load_difuse_config(
            _write_experiment(tmp_path, pixel_model_dir, tiny_image_folder, "moe", "ref"), settings
        )
    )
    config = load_difuse_config(
        _write_experiment(tmp_path, pixel_model_dir, tiny_image_folder, "moe", "run"), settings
    )
    with pytest.raises(Interrupted, match="rerun with resume=True"):
        run_difuse(config, callbacks=[_Interrupt()])
    # a changed budget is refused before anything is written: the schedule is the one the run started with
    run_dir = tmp_path / "run"
    before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()}
    longer = load_difuse_config(_write_experiment(tmp_path, pixel_model_dir, tiny_image_folder, "moe", "run"),
                                [*settings, "train.epochs=6"])  # fmt: skip
    with pytest.raises(GeosaneError) as err:
        run_difuse(longer, resume=True)
    message = str(err.value)
    assert "train.epochs is 6 but the run in" in message and "was started with 4" in message
    assert "resuming continues the schedule the run started with" in message and "train.epochs=4" in message
    assert err.value.cli_message().startswith("--resume: train.epochs is 6")
    assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file()} == before
    resumed = run_difuse(load_difuse_config(run_dir.parent / "moe.yaml", [*settings, "train.progress=false"]),
                         resume=True)  # fmt: skip
    assert resumed["history"] == reference["history"] and resumed["test"] == reference["test"]
    got, want = (
        load_file(tmp_path / "run" / "model.safetensors"),
        load_file(tmp_path / "ref" / "model.safetensors"),
    )
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.slow
def test_difuse_resume_of_a_finished_run(
    pixel_model_dir: Path, tiny_image_folder: Path, tmp_path: Path
) -> None:
    config = _write_experiment(tmp_path, pixel_model_dir, tiny_image_folder, "moe", "run")
    first = run_difuse(load_difuse_config(config, ["train.patience=50"]))
    assert first["epochs_run"] == 3
    with pytest.raises(GeosaneError, match="pass resume=True"):
        run_difuse(load_difuse_config(config))
    # more epochs would resume past the end of the cosine schedule (lr 0): refused, naming the key
    with pytest.raises(GeosaneError, match=r"train\.epochs is 5 but the run .* was started with 3"):
        run_difuse(load_difuse_config(config, ["train.epochs=5", "train.patience=50"]), resume=True)
    # a checkpoint from before configs were stored in it: the run's config.yaml is compared instead
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    stored = torch.load(last, weights_only=True)
    torch.save({k: v for k, v in stored.items() if k != "geosane_config"}, last)
    with pytest.raises(GeosaneError, match=r"train\.epochs is 5 but the run .* was started with 3"):
        run_difuse(load_difuse_config(config, ["train.epochs=5", "train.patience=50"]), resume=True)
    torch.save(stored, last)
    again = run_difuse(load_difuse_config(config, ["train.patience=50"]), resume=True)
    assert again["history"] == first["history"] and again["test"] == first["test"]
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3 * 3 and ckpt["geosane_config"]["train"]["epochs"] == 3
    assert int(ckpt["state_dict"]["model.fuser.optimizer_steps"]) == 3 * 3


@pytest.mark.slow
def test_csmask_segmentation_with_upernet(pixel_model_dir: Path, csmask_root: Path, tmp_path: Path) -> None:
    config = tmp_path / "seg.yaml"
    config.write_text(
        "base: [difuser/csmask_moe.yaml]\n"
        f"backbone: {{model_dir: {pixel_model_dir}, image_size: 32, save_timesteps: [1, 21]}}\n"
        f"task: {{root: {csmask_root}, chip_size: 32, max_per_class: 24}}\n"
        "fuser: {width: 16, num_experts: 3}\ndecoder: {channels: 16}\n"
        "train: {epochs: 2, batch_size: 8, progress: false}\n"
        f"output_dir: {tmp_path / 'seg'}\ncache_dir: {tmp_path / 'cache'}\n"
    )
    report = run_difuse(load_difuse_config(config))
    metrics = json.loads((tmp_path / "seg" / "metrics.json").read_text())["test"]
    assert report["metric"] == "miou" and 0.0 <= report["test"] <= 1.0
    assert set(metrics["per_class"]) == {"clear", "cloud", "shadow"} and metrics["ignored_index"] == 255


def test_probe_and_scratch_baselines(pixel_model_dir: Path, tiny_image_folder: Path, tmp_path: Path) -> None:
    from geosane.difuser import run_probe, run_scratch_baseline

    cfg = load_difuse_config(
        _write_experiment(tmp_path, pixel_model_dir, tiny_image_folder, "gw", "base"), ["train.batch_size=8"]
    )
    probe = run_probe(cfg)
    assert len(probe["all"]) == 2 * 6  # every (timestep, layer) of the tiny UNet
    best_select = max(r["select_accuracy"] for r in probe["all"])
    assert probe["best"]["select_accuracy"] == best_select  # chosen on select, reported on test
    assert probe["test_accuracy"] == probe["best"]["test_accuracy"]
    assert json.loads((tmp_path / "base" / "probe.json").read_text())["best"] == probe["best"]
    scratch = run_scratch_baseline(cfg, arch="resnet10t", epochs=1)
    assert 0.0 <= scratch["test_accuracy"] <= 1.0 and scratch["image_size"] == 16
    assert (tmp_path / "base" / "scratch.json").is_file()


def test_ema_ramps_up_so_short_runs_track_the_trained_weights() -> None:
    from torch.optim.swa_utils import AveragedModel

    from geosane.difuser.pretrain import ema_with_warmup

    model = torch.nn.Linear(2, 2)
    ema = AveragedModel(model, avg_fn=ema_with_warmup(0.999), use_buffers=True)
    for step in range(300):
        with torch.no_grad():
            model.weight.fill_(float(step))
        ema.update_parameters(model)
    # a fixed 0.999 decay would still sit near the first values (~45); the ramp follows recent steps
    assert 250 < float(ema.module.weight[0, 0].detach()) < 299


def test_seed_sweep_runs_each_seed_and_aggregates(
    pixel_model_dir: Path, tiny_image_folder: Path, tmp_path: Path
) -> None:
    import statistics

    from geosane.difuser import run_difuse_sweep

    config = _write_experiment(tmp_path, pixel_model_dir, tiny_image_folder, "gw", "sweep")
    with pytest.raises(SystemExit) as exit_info:
        main(["difuse", str(config), "seeds=[0,1]"])
    assert exit_info.value.code in (0, None)
    out = tmp_path / "sweep"
    summary = json.loads((out / "sweep.json").read_text())
    assert summary["seeds"] == [0, 1] and [r["seed"] for r in summary["runs"]] == [0, 1]
    reports = [json.loads((out / f"seed{s}" / "report.json").read_text()) for s in (0, 1)]
    assert [r["config"]["train"]["seed"] for r in reports] == [0, 1]
    assert reports[0]["history"][0]["train_loss"] != reports[1]["history"][0]["train_loss"]  # different inits
    tests = [r["test"] for r in reports]
    agg = summary["aggregate"]["test"]
    assert agg["mean"] == pytest.approx(statistics.mean(tests)) and agg["std"] == pytest.approx(
        statistics.stdev(tests)
    )
    table = (out / "report.md").read_text()
    assert "| seed | select accuracy | test accuracy |" in table
    assert f"**{agg['mean']:.4f} ± {agg['std']:.4f}**" in table
    # a second sweep into the same directory is refused before anything is written
    stamp = (out / "sweep.json").stat().st_mtime_ns
    cfg = load_difuse_config(config, ["seeds=[0,1,2]"])
    with pytest.raises(GeosaneError, match="seed0 already holds a training run; pass resume=True"):
        run_difuse_sweep(cfg)
    assert (out / "sweep.json").stat().st_mtime_ns == stamp and not (out / "seed2").exists()
    # resume: finished seeds come back unchanged, the new seed runs
    resumed = run_difuse_sweep(cfg, resume=True)
    assert [r["seed"] for r in resumed["runs"]] == [0, 1, 2]
    assert [r["test"] for r in resumed["runs"][:2]] == tests
    assert (out / "seed2" / "report.json").is_file() and resumed["aggregate"]["test"]["n"] == 3


def test_bad_seed_lists_are_refused(pixel_model_dir: Path, tiny_image_folder: Path, tmp_path: Path) -> None:
    from geosane.errors import ConfigError

    config = _write_experiment(tmp_path, pixel_model_dir, tiny_image_folder, "gw", "bad")
    for seeds in ("seeds=[]", "seeds=[1,1]"):
        with pytest.raises(ConfigError, match="seeds must list distinct training seeds"):
            load_difuse_config(config, [seeds])
    with pytest.raises(
        ConfigError, match=r"asks for a seed sweep: run it with geosane\.difuser\.run_difuse_sweep"
    ):
        run_difuse(load_difuse_config(config, ["seeds=[0,1]"]))
    assert not (tmp_path / "bad").exists()
