"""``geosane bench foundry``: the transfer benchmark of the model foundry."""

from __future__ import annotations

from pathlib import Path

import typer

from geosane.console import console

__all__ = ["foundry_command", "register"]


def foundry_command(
    data: Path | None = typer.Option(
        None, "--data", help="Image folder root/<class>/<image> (e.g. ../shared/data/rsscn7)."
    ),
    out: Path | None = typer.Option(None, "--out", help="Where every stage writes (reruns resume)."),
    eval_folder: Path | None = typer.Option(
        None,
        "--eval-folder",
        help="A separate folder of the same classes to test on instead of the target's test split.",
    ),
    quick: bool = typer.Option(
        False, "--quick", help="A few-minute smoke run (tiny autoencoder, 1 epoch, 2 seeds)."
    ),
    config: Path | None = typer.Option(
        None, "--config", help="A benchmark YAML config instead of the packaged one."
    ),
    overrides: list[str] | None = typer.Argument(None, help="Dotted overrides, e.g. budget.seeds=[0,1,2]."),
) -> None:
    """Source zoo -> autoencoder -> generated weights vs every control on a held-apart target; report.md."""
    from geosane.benchmark.foundry import load_bench_config, run_foundry_bench

    cfg = load_bench_config(config or ("quick" if quick else "foundry"), overrides or [])
    if out is not None:
        cfg.out = out
    if data is not None:
        cfg.data = data
    if eval_folder is not None:
        cfg.eval_folder = eval_folder
    result = run_foundry_bench(cfg)
    console.print(
        f"bench foundry finished in {result.seconds['total'] / 60:.1f} min; report: [bold]{result.report}[/]"
    )


def register(app: typer.Typer, bench: typer.Typer) -> None:
    del app
    bench.command("foundry")(foundry_command)
