"""``geosane generate``."""

from __future__ import annotations

from pathlib import Path

import typer

from geosane.console import console

__all__ = ["register"]


def generate_command(
    ae: Path = typer.Option(
        ..., "--ae", help="Exported autoencoder (autoencoder.safetensors from `geosane train`)."
    ),
    prompt: str = typer.Option(
        ..., "--prompt", help="Prompt model: timm:NAME, hf:ORG/NAME, zoo:DIR#ID, a checkpoint..."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output directory (top-k *.safetensors, model_card.json, load_generated.py)."
    ),
    num_candidates: int = typer.Option(10, "--num-candidates", help="Candidates sampled and ranked."),
    top_k: int = typer.Option(3, "--top-k", help="Best candidates kept."),
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
    select_split: str = typer.Option(
        "select", "--select-split", help="'select' (seeded selection split of --select-data) or 'all'."
    ),
    split_seed: int = typer.Option(0, "--split-seed", help="Seed of the train/select/test split."),
    image_size: int = typer.Option(64, "--image-size", help="Images are resized to this size."),
    kde_mode: str = typer.Option(
        "token", "--kde-mode", help="token: anchor chosen per token; joint: per candidate."
    ),
    bandwidth: float = typer.Option(0.2, "--bandwidth", help="KDE bandwidth in units of the latent std."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    store: Path | None = typer.Option(None, "--store", help="Token store of the zoo (for --anchors)."),
    anchors: int = typer.Option(
        0, "--anchors", help="Nearest same-architecture zoo models used as extra KDE anchors."
    ),
    align_anchors: bool = typer.Option(
        False, "--align-anchors", help="Reorder each anchor's units to the prompt's first (git re-basin weight matching)."
    ),
    proxy: str = typer.Option("knn", "--proxy", help="Ranking proxy on frozen features: knn | linear."),
    decode: str = typer.Option(
        "direct",
        "--decode",
        help="direct: decode the sampled latents (the paper); residual: prompt + decode(z) - decode(z_prompt).",
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
    from geosane.generation.config import GenerateConfig, validate_config

    cfg = GenerateConfig(
        ae=ae,
        prompt=prompt,
        out=out,
        num_candidates=num_candidates,
        top_k=top_k,
        in_chans=in_chans,
        num_classes=num_classes,
        select_data=select_data,
        select_split=select_split,
        split_seed=split_seed,
        image_size=image_size,
        kde_mode=kde_mode,  # type: ignore[arg-type]
        bandwidth=bandwidth,
        seed=seed,
        random_init=random_init,
        store=store,
        anchors=anchors,
        align_anchors=align_anchors,
        proxy=proxy,  # type: ignore[arg-type]
        token_size=token_size,
        overwrite=overwrite,
        decode=decode,  # type: ignore[arg-type]
        generate_only=list(generate_only or []),
    )
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
