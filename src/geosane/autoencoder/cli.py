"""``geosane train``, ``geosane embed`` and ``geosane bench train``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geosane.console import console


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the autoencoder commands to the root app and its benchmark to ``geosane bench``."""

    @app.command("train")
    def train_command(
        config: str = typer.Argument(..., help="Config YAML (or a preset: tiny, small, paper)."),
        overrides: list[str] | None = typer.Argument(None, help="key=value overrides, e.g. train.max_steps=500."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run in train.out from its last checkpoint."),
    ) -> None:
        """Train the weight-space autoencoder on a token store (Lightning; checkpoints; resumable)."""
        from geosane.autoencoder.config import load_autoencoder_config

        cfg = load_autoencoder_config(config, overrides or [])
        from geosane.autoencoder.training import train  # heavy imports after the config is checked

        result = train(cfg, resume=resume)
        summary = result.summary
        line = f"trained {result.steps} steps -> {result.export}"
        if "val" in summary:
            line += f"; held-out R^2 {summary['val']['r2']:.3f} (per-layer {summary['val']['r2_layer']:.3f})"
        if "train" in summary:
            line += f"; training-model R^2 {summary['train']['r2']:.3f}"
        console.print(line)

    @app.command("embed")
    def embed_command(
        ae: Path = typer.Option(..., "--ae", help="Autoencoder: autoencoder.safetensors, a .ckpt or a run directory."),
        store: Path = typer.Option(..., "--store", help="Token store directory."),
        out: Path | None = typer.Option(None, "--out", help="Embeddings file (default: next to the autoencoder)."),
        probe_property: list[str] | None = typer.Option(
            None, "--probe-property", help="Manifest property to predict with ridge regression (repeatable)."
        ),
        folds: int = typer.Option(5, "--folds", min=2, help="Cross-validation folds for --probe-property."),
        as_json: bool = typer.Option(False, "--json", help="Print the probe results as one JSON line."),
    ) -> None:
        """One embedding per model (mean and statistics of its latents); optional property probe."""
        from rich.table import Table

        from geosane.autoencoder.embed import KINDS, embed_store, save_embeddings
        from geosane.autoencoder.embed import probe_property as probe
        from geosane.autoencoder.io import load_autoencoder
        from geosane.tokens.store import TokenStore

        model, _ = load_autoencoder(ae)
        token_store = TokenStore(store)
        embeddings = embed_store(model, token_store)
        for name in probe_property or []:
            embeddings.property_values(name)  # validate before writing
        run_dir = ae if ae.is_dir() else ae.parent
        target = out or run_dir / f"embeddings-{token_store.path.name}.safetensors"
        save_embeddings(embeddings, target)
        console.print(f"{len(embeddings.ids)} embeddings -> {target}")
        results = {}
        for name in probe_property or []:
            y = embeddings.property_values(name)
            results[name] = {kind: probe(embeddings.get(kind), y, folds) for kind in KINDS}
        if as_json:
            print(json.dumps({"embeddings": str(target), "models": len(embeddings.ids), "probe": results}))
            return
        for name, by_kind in results.items():
            table = Table(title=f"ridge probe: {name} ({len(embeddings.ids)} models, {folds}-fold CV)")
            for column in ("embedding", "R^2", "MAE"):
                table.add_column(column)
            for kind, r in by_kind.items():
                table.add_row(kind, f"{r['r2']:.3f}", f"{r['mae']:.4f}")
            console.print(table)

    @bench.command("scale")
    def bench_scale_command(
        out: Path = typer.Option(Path("bench-scale"), "--out", help="Results directory (resumable)."),
        models: list[str] | None = typer.Option(
            None, "--model", help="timm architecture (repeatable; default: 12 large models, ~3.2B parameters)."
        ),
        windows: int = typer.Option(2000, "--windows", min=1, help="Training windows streamed per measurement."),
        keep: bool = typer.Option(False, "--keep", help="Keep the synthetic zoo and store (tens of GB)."),
    ) -> None:
        """Tokenize and stream a multi-billion-parameter synthetic zoo: GB/s, store bytes, peak RSS, windows/s."""
        from geosane.autoencoder.scale import DEFAULT_SCALE_MODELS, bench_scale

        bench_scale(out, models or DEFAULT_SCALE_MODELS, windows=windows, keep=keep)
        console.print(f"report: {out / 'report.md'}")

    @bench.command("train")
    def bench_train_command(
        config: str | None = typer.Option(None, "--config", help="Config YAML or preset (default: small)."),
        overrides: list[str] | None = typer.Argument(None, help="key=value overrides (model.window=128 ...)."),
        steps: int = typer.Option(10, "--steps", min=1, help="Timed training steps."),
        warmup: int = typer.Option(3, "--warmup", min=0, help="Untimed steps first (compilation, caches)."),
        device: str | None = typer.Option(None, "--device", help="cpu or cuda (default: cuda if available)."),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON line on stdout."),
    ) -> None:
        """Tokens/s and peak memory of autoencoder training steps (forward, backward, AdamW)."""
        from geosane.autoencoder.bench import benchmark_training
        from geosane.autoencoder.config import load_autoencoder_config

        cfg = load_autoencoder_config(config or "small", overrides or [])
        result = benchmark_training(cfg, steps=steps, warmup=warmup, device=device)
        if as_json:
            print(json.dumps(result))
            return
        console.print(
            f"[bold]{config or 'small'}[/] ({result['parameters']:,} parameters, window {cfg.model.window}, "
            f"batch {cfg.data.batch_size}, {result['device']}, {result['threads']} threads): "
            f"{result['tokens_per_s']:,.0f} tokens/s, {result['step_seconds'] * 1000:.1f} ms/step "
            f"(optimizer {result['optimizer_seconds'] * 1000:.1f} ms), "
            f"peak RSS {result['peak_rss_bytes'] / 2**20:,.0f} MiB"
        )
