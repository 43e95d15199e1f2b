"""``geosane tokenize`` (zoo -> token store) and ``geosane bench tokenizer``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from geosane.console import console
from geosane.errors import GeosaneError


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the token commands to the root app and the tokenizer benchmark to ``geosane bench``."""

    @app.command("tokenize")
    def tokenize_command(
        zoo: Path = typer.Option(..., "--zoo", help="Zoo directory (with manifest.json)."),
        out: Path = typer.Option(..., "--out", help="Token store directory to create or resume."),
        token_size: int = typer.Option(230, "--token-size", help="Values per token (d_t)."),
        mode: str = typer.Option(
            "dense", "--mode", help="dense (contiguous chunks) or row (per output row)."
        ),
        include: list[str] | None = typer.Option(
            None, "--include", help="Glob of tensor names to tokenize (repeatable); others are carried."
        ),
        exclude: list[str] | None = typer.Option(
            None, "--exclude", help="Glob of tensor names to carry instead of tokenizing (repeatable)."
        ),
        allow_nonfinite: bool = typer.Option(False, "--allow-nonfinite", help="Tokenize NaN/Inf values."),
        skip_missing: bool = typer.Option(
            False, "--skip-missing", help="Skip manifest rows whose weights file is missing."
        ),
        no_verify: bool = typer.Option(
            False, "--no-verify", help="On a rerun, trust existing files without re-hashing them."
        ),
        repair: bool = typer.Option(
            False, "--repair", help="Rebuild token files that no longer match the index (else refused)."
        ),
    ) -> None:
        """Tokenize every model of a zoo into a token store (resumable: finished models are skipped)."""
        from geosane.tokens.store import tokenize_zoo

        tokenize_zoo(
            zoo,
            out,
            token_size,
            mode,
            include=include or None,
            exclude=exclude or (),
            allow_nonfinite=allow_nonfinite,
            skip_missing=skip_missing,
            verify=not no_verify,
            repair=repair,
        )

    tokens_app = typer.Typer(help="Inspect token stores.", no_args_is_help=True)
    app.add_typer(tokens_app, name="tokens")

    @tokens_app.command("info")
    def info_command(
        store_dir: Path = typer.Argument(..., help="Token store directory."),
        verify: bool = typer.Option(False, "--verify", help="Re-hash every file against the index."),
    ) -> None:
        """A table of the models in a token store (tokens, layers, properties)."""
        from rich.table import Table

        from geosane.tokens.store import TokenStore

        store = TokenStore(store_dir)
        table = Table(title=f"{store.path}  ({store.mode}, d_t={store.token_size})")
        for column in ("id", "family", "params", "tokens", "layers", "accuracy") + (
            ("ok",) if verify else ()
        ):
            left = column in ("id", "family")
            table.add_column(
                column, justify="left" if left else "right", overflow="fold" if left else "ellipsis"
            )
        bad = 0
        for i, record in enumerate(store):
            accuracy = record.properties.get("accuracy")
            row = [
                record.id,
                record.family or "",
                f"{record.num_params:,}" if record.num_params is not None else "",
                f"{record.num_tokens:,}",
                str(record.num_layers or ""),
                f"{accuracy:.3f}" if isinstance(accuracy, int | float) else "",
            ]
            if verify:
                ok = store.verify(i)
                bad += not ok
                row.append("yes" if ok else "[red]NO[/]")
            table.add_row(*row)
        console.print(table)
        console.print(f"{len(store)} models, {store.total_tokens:,} tokens")
        if bad:
            raise GeosaneError(
                f"{bad} token file(s) in {store.path} do not match the index; rerun `geosane tokenize`"
            )

    @tokens_app.command("verify")
    def verify_command(store_dir: Path = typer.Argument(..., help="Token store directory.")) -> None:
        """Check every token file (inside the store, SHA-256, token count, finite values); exit 1 on a problem.

        Reports only: nothing is repaired or written.
        """
        from geosane.console import report_verification
        from geosane.tokens.store import verify_store

        report_verification(f"token store {store_dir}", verify_store(store_dir))

    @bench.command("tokenizer")
    def bench_tokenizer_command(
        source: str = typer.Option(..., "--source", help="Model source, e.g. timm:vit_large_patch16_224."),
        random_init: bool = typer.Option(False, "--random-init", help="Random weights for timm: sources."),
        token_size: int = typer.Option(230, "--token-size", help="Values per token (d_t)."),
        mode: str = typer.Option("dense", "--mode", help="dense or row."),
        repeats: int = typer.Option(3, "--repeats", min=1, help="Timed runs; the best is reported."),
        threads: int | None = typer.Option(
            None, "--threads", min=1, help="torch intra-op threads (default: torch's choice)."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print one JSON line on stdout."),
    ) -> None:
        """Tokenizer throughput vs a plain memory copy of the same tensors, and peak RSS."""
        import torch

        from geosane.tokens.bench import benchmark_tokenizer, rss_bytes
        from geosane.tokens.tokenizer import _check_settings
        from geosane.zoo import resolve

        _check_settings(token_size, mode)
        if threads is not None:
            torch.set_num_threads(threads)
        interpreter_rss = rss_bytes()
        model = resolve(source, random_init=random_init)
        result = benchmark_tokenizer(model.state_dict, token_size, mode, repeats, interpreter_rss)
        result["source"] = source
        if as_json:
            print(json.dumps(result))
            return
        gib = 1 << 30
        console.print(
            f"[bold]{source}[/]: {result['params']:,} parameters ({result['model_bytes'] / gib:.2f} GiB), "
            f"{result['num_tokens']:,} tokens ({mode}, d_t={token_size}), best of {result['repeats']}\n"
            f"  tokenize      {result['seconds']:.3f} s   {result['bytes_per_s'] / 1e9:.2f} GB/s\n"
            f"  memory copy   {result['memcpy_bytes_per_s'] / 1e9:.2f} GB/s   ratio {result['ratio']:.2f} (target >= 0.5)\n"
            f"  peak RSS      {result['peak_rss_bytes'] / gib:.2f} GiB, "
            f"{(result['peak_rss_bytes'] - result['baseline_rss_bytes']) / gib:.2f} GiB above the loaded model "
            f"= {result['rss_over_model']:.2f}x its size (target <= 2)",
            highlight=False,
        )
