"""``geosane difuse``: SatDiFuser commands.

    geosane difuse CONFIG.yaml [key=value ...]         train fuser + head (same as ``difuse train``)
    geosane difuse train CONFIG.yaml [key=value ...]   train fuser + head, report on the test split
                                                       (seeds=[0,1,2]: a seed sweep, mean ± std)
    geosane difuse extract CONFIG.yaml [...]           only build the on-disk feature cache
    geosane difuse probe CONFIG.yaml [...]             linear probe per (timestep, layer); best on select
    geosane difuse scratch CONFIG.yaml [...]           small CNN trained from scratch on the same splits
    geosane difuse pretrain CONFIG.yaml [...]          train a small pixel DDPM on unlabeled images
    geosane difuse layers MODEL_DIR                    list the hookable layer names of a UNet
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from typer.core import TyperGroup

__all__ = ["register"]

_OVERRIDES_HELP = "Config overrides key=value (e.g. fuser.name=moe train.epochs=5)."


class _DefaultTrainGroup(TyperGroup):
    """A command group where ``difuse CONFIG ...`` means ``difuse train CONFIG ...``."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:  # a click.Context (newer typer vendors its own click)
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["train", *args]
        return super().parse_args(ctx, args)


difuse_app = typer.Typer(
    cls=_DefaultTrainGroup,
    help="SatDiFuser: diffusion UNet features fused by GW / LW / MoE. "
    "`geosane difuse CONFIG.yaml` is short for `geosane difuse train CONFIG.yaml`.",
    no_args_is_help=True,
)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


@difuse_app.command("train")
def train_command(
    config: Path = typer.Argument(..., help="Experiment YAML (lists backbone/fuser/decoder/task bases)."),
    overrides: list[str] = typer.Argument(None, help=_OVERRIDES_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUTPUT_DIR/checkpoints/last.ckpt."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Train fuser + head on cached UNet features; early stopping on select, report on test.

    With ``seeds=[0,1,2]`` one run per seed (OUTPUT_DIR/seed<k>/) and a mean ± std table (report.md).
    """
    from geosane.difuser.config import load_difuse_config
    from geosane.difuser.sweep import run_difuse_sweep
    from geosane.difuser.train import run_difuse

    cfg = load_difuse_config(config, overrides or [])
    report = run_difuse_sweep(cfg, resume=resume) if cfg.seeds is not None else run_difuse(cfg, resume=resume)
    if as_json:
        _print_json(report)


@difuse_app.command("extract")
def extract_command(
    config: Path = typer.Argument(..., help="Experiment YAML."),
    overrides: list[str] = typer.Argument(None, help=_OVERRIDES_HELP),
) -> None:
    """Run the frozen UNet once over the task images and cache features per (image, timestep)."""
    from geosane.console import console
    from geosane.difuser.config import load_difuse_config
    from geosane.difuser.train import prepare_features

    cache, _, _ = prepare_features(load_difuse_config(config, overrides or []))
    console.print(f"feature cache ready: {cache.directory}")


@difuse_app.command("probe")
def probe_command(
    config: Path = typer.Argument(..., help="Experiment YAML (its backbone, task and cache are used)."),
    overrides: list[str] = typer.Argument(None, help=_OVERRIDES_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Linear probe on every single (timestep, layer); the best on select is reported on test."""
    from geosane.difuser.config import load_difuse_config
    from geosane.difuser.probe import run_probe

    report = run_probe(load_difuse_config(config, overrides or []))
    if as_json:
        _print_json(report)


@difuse_app.command("scratch")
def scratch_command(
    config: Path = typer.Argument(..., help="Experiment YAML (its task, splits and image size are used)."),
    overrides: list[str] = typer.Argument(None, help=_OVERRIDES_HELP),
    arch: str = typer.Option("resnet10t", help="timm architecture, randomly initialised."),
    epochs: int = typer.Option(30, help="Training epochs."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Baseline: a small CNN trained from scratch (geosane.tasks) on the same splits and image size."""
    from geosane.difuser.config import load_difuse_config
    from geosane.difuser.probe import run_scratch_baseline

    report = run_scratch_baseline(load_difuse_config(config, overrides or []), arch=arch, epochs=epochs)
    if as_json:
        _print_json(report)


@difuse_app.command("pretrain")
def pretrain_command(
    config: Path = typer.Argument(..., help="Pretraining YAML (e.g. difuser/pretrain/ddpm_rsscn7.yaml)."),
    overrides: list[str] = typer.Argument(None, help=_OVERRIDES_HELP),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUTPUT_DIR/checkpoints/last.ckpt."),
) -> None:
    """Train a small pixel-space DDPM on unlabeled images; writes a diffusers model directory."""
    from geosane.console import console
    from geosane.difuser.config import load_pretrain_config
    from geosane.difuser.pretrain import pretrain_ddpm

    result = pretrain_ddpm(load_pretrain_config(config, overrides or []), resume=resume)
    console.print(
        f"DDPM: {result.steps} steps on {result.num_images} images in {result.seconds:.0f}s "
        f"(final loss {result.final_loss:.4f}) -> {result.model_dir}"
    )


@difuse_app.command("layers")
def layers_command(
    model_dir: Path = typer.Argument(..., help="A diffusers model directory (or a bare UNet directory)."),
) -> None:
    """List the layer names usable in backbone.layer_idxs (globs like up1_res* work too)."""
    from geosane.difuser.backbone import find_unet_dir, list_hook_layers, load_unet

    unet_dir, class_name = find_unet_dir(model_dir)
    for name in list_hook_layers(load_unet(unet_dir, class_name)):
        print(name)


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add ``geosane difuse ...`` to the root CLI."""
    app.add_typer(difuse_app, name="difuse")
