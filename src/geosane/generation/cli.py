"""``geosane generate``."""

from __future__ import annotations

from pathlib import Path

import typer

from geosane.console import console
from geosane.generation.config import GenerateConfig

__all__ = ["register"]


def _default(name: str) -> str:
    """`` [default: X]`` for a flag's help, from :class:`GenerateConfig` (the one place defaults live;
    the flags themselves default to None, so that an unset flag leaves the --config value)."""
    return rf" \[default: {getattr(GenerateConfig, name)}]"  # \[: a literal bracket in Rich markup


def generate_command(
    overrides: list[str] | None = typer.Argument(
        None, help="Dotted overrides key=value of the config, e.g. bandwidth=0.5 generate_only='[*bn*]'."
    ),
    config: str | None = typer.Option(
        None,
        "--config",
        help="YAML config of GenerateConfig fields (a file or a packaged preset, e.g. anchored); flags win over it.",
    ),
    ae: Path | None = typer.Option(
        None, "--ae", help="Exported autoencoder (autoencoder.safetensors from `geosane train`)."
    ),
    prompt: str | None = typer.Option(
        None, "--prompt", help="Prompt model: timm:NAME, hf:ORG/NAME, zoo:DIR#ID, a checkpoint..."
    ),
    out: Path | None = typer.Option(
        None, "--out", help="Output directory (top-k *.safetensors, model_card.json, load_generated.py)."
    ),
    num_candidates: int | None = typer.Option(
        None,
        "--num-candidates",
        help="Candidates sampled and ranked." + _default("num_candidates"),
    ),
    top_k: int | None = typer.Option(None, "--top-k", help="Best candidates kept." + _default("top_k")),
    in_chans: int | None = typer.Option(
        None, "--in-chans", help="Input bands; the prompt's stem is adapted if it differs."
    ),
    num_classes: int | None = typer.Option(
        None, "--num-classes", help="Classes of the new head (default: from --select-data)."
    ),
    select_data: Path | None = typer.Option(
        None,
        "--select-data",
        help="Labelled image folder (or, for smp segmenters, a folder of .npz selection scenes with --select-split all) for BN recalibration and ranking.",
    ),
    select_split: str | None = typer.Option(
        None,
        "--select-split",
        help="'select' (seeded selection split of --select-data) or 'all'." + _default("select_split"),
    ),
    split_seed: int | None = typer.Option(
        None, "--split-seed", help="Seed of the train/select/test split." + _default("split_seed")
    ),
    image_size: int | None = typer.Option(
        None, "--image-size", help="Images are resized to this size." + _default("image_size")
    ),
    kde_mode: str | None = typer.Option(
        None,
        "--kde-mode",
        help="token: anchor chosen per token; joint: per candidate." + _default("kde_mode"),
    ),
    bandwidth: float | None = typer.Option(
        None,
        "--bandwidth",
        help="KDE bandwidth in units of the latent std." + _default("bandwidth"),
    ),
    seed: int | None = typer.Option(None, "--seed", help="Random seed." + _default("seed")),
    store: Path | None = typer.Option(None, "--store", help="Token store of the zoo (for --anchors)."),
    anchors: int | None = typer.Option(
        None,
        "--anchors",
        help="Nearest same-architecture zoo models used as extra KDE anchors." + _default("anchors"),
    ),
    align_anchors: bool = typer.Option(
        False,
        "--align-anchors",
        help="Reorder each anchor's units to the prompt's first (git re-basin weight matching).",
    ),
    proxy: str | None = typer.Option(
        None,
        "--proxy",
        help="Ranking proxy on frozen features: knn | linear." + _default("proxy"),
    ),
    decode: str | None = typer.Option(
        None,
        "--decode",
        help="direct: decode the sampled latents (the paper); residual: prompt + decode(z) - decode(z_prompt)."
        + _default("decode"),
    ),
    generate_only: list[str] | None = typer.Option(
        None,
        "--generate-only",
        help="Generate only the tensors whose state-dict name matches this glob (repeatable, e.g. '*bn*'); "
        "every other tensor is the prompt's own. Default: generate every tokenized tensor.",
    ),
    token_size: int | None = typer.Option(
        None, "--token-size", help="Expected token size (checked against the AE)."
    ),
    random_init: bool = typer.Option(
        False, "--random-init", help="Allow a timm prompt without pretrained weights."
    ),
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Replace an earlier generate output in --out (never a folder geosane did not write, nor an input).",
    ),
) -> None:
    """Generate ready-to-fine-tune weights for the prompt's architecture."""
    from geosane.generation.config import load_generate_config, validate_config

    flags = {
        "ae": ae, "prompt": prompt, "out": out, "num_candidates": num_candidates, "top_k": top_k,
        "in_chans": in_chans, "num_classes": num_classes, "select_data": select_data, "select_split": select_split,
        "split_seed": split_seed, "image_size": image_size, "kde_mode": kde_mode, "bandwidth": bandwidth,
        "seed": seed, "store": store, "anchors": anchors, "proxy": proxy, "decode": decode,
        "token_size": token_size, "generate_only": list(generate_only) if generate_only else None,
        # on/off flags can only switch a setting on: off, they leave the config's value
        "align_anchors": align_anchors or None, "random_init": random_init or None, "overwrite": overwrite or None,
    }  # fmt: skip
    cfg = load_generate_config(config, overrides or [], flags)
    validate_config(cfg)  # before the heavy imports: a bad flag costs no torch start-up
    from geosane.generation.pipeline import generate

    result = generate(cfg)
    for c in result.card["candidates"]:
        score = (
            "not ranked (no --select-data)"
            if c["proxy_score"] is None
            else f"{c['proxy']} proxy {c['proxy_score']:.4f}"
        )
        console.print(f"  rank {c['rank']}: {c['file']}  {score}")
    console.print(f"[green]wrote[/] {result.out} (model_card.json, load_generated.py)")


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("generate")(generate_command)
