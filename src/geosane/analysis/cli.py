"""``geosane probe`` and ``geosane cka`` (and ``geosane bench cka``)."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer

__all__ = ["register"]


class ProbeMode(StrEnum):
    layers = "layers"
    decoders = "decoders"


def probe(
    config: Path = typer.Argument(..., help="probe config YAML (or a shipped one, e.g. probe_rsscn7.yaml)"),
    overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. probe.fractions=[0.1,1.0]"),
    mode: ProbeMode = typer.Option(
        ProbeMode.layers,
        "--mode",
        help="layers: layerwise probes; decoders: linear/UPerNet/U-Net heads, frozen vs fine-tuned, per label fraction",
    ),
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary on stdout"),
) -> None:
    """Layerwise probing of backbones (CSV + depth profile), or a decoder/adaptation comparison."""
    from geosane.analysis.config import ProbeConfig
    from geosane.config import find_config, load_config

    cfg = load_config(ProbeConfig, find_config(config, "analysis"), overrides or [])
    if mode == ProbeMode.decoders:
        from geosane.analysis.decoders import run_decoders

        decoders = run_decoders(cfg)
        summary = {
            "csv": str(decoders.csv_path),
            "table": str(decoders.table_path),
            "plot": str(decoders.plot_path),
            "trained": decoders.trained,
            "resumed": decoders.resumed,
            "settings_changed": decoders.settings_changed,
            "rows": decoders.rows,
        }
    else:
        from geosane.analysis.probing import run_probe

        summary = run_probe(cfg).summary
    _finish(summary, as_json)


def cka(
    config: Path = typer.Argument(..., help="CKA config YAML (or a shipped one, e.g. cka_rsscn7.yaml)"),
    overrides: list[str] = typer.Argument(None, help="dotted overrides, e.g. estimator=debiased"),
    as_json: bool = typer.Option(False, "--json", help="print a JSON summary on stdout"),
) -> None:
    """CKA between every layer of two models on the same images (CSV, heatmap, diagonal profile)."""
    from geosane.analysis.config import CkaConfig
    from geosane.analysis.similarity import run_cka
    from geosane.config import find_config, load_config

    cfg = load_config(CkaConfig, find_config(config, "analysis"), overrides or [])
    _finish(run_cka(cfg).summary, as_json)


def _finish(summary: dict, as_json: bool) -> None:
    from geosane.console import console

    if as_json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        for key in ("csv", "table", "plot", "heatmap", "diagonal"):
            if key in summary:
                console.print(f"{key}: {summary[key]}", highlight=False)


def bench_cka(
    samples: int = typer.Option(2048, help="inputs per layer"),
    features: int = typer.Option(3072, help="features per input (e.g. 16 tokens x 192)"),
    layers: int = typer.Option(24, help="layers per model"),
    batch_size: int = typer.Option(256, help="minibatch size"),
) -> None:
    """Throughput of minibatch CKA (all layer pairs of two models), samples per second."""
    import time

    import torch

    from geosane.analysis.cka import MinibatchCKAMatrix
    from geosane.console import console

    generator = torch.Generator().manual_seed(0)
    batches = [
        [torch.randn(batch_size, features, generator=generator) for _ in range(layers)]
        for _ in range(max(samples // batch_size, 1))
    ]
    accumulator = MinibatchCKAMatrix()
    started = time.perf_counter()
    for xs in batches:
        accumulator.update(xs, xs)
    accumulator.compute()
    seconds = time.perf_counter() - started
    done = len(batches) * batch_size
    result = {
        "samples": done,
        "layers": layers,
        "features": features,
        "batch_size": batch_size,
        "seconds": round(seconds, 3),
        "samples_per_s": round(done / seconds, 1),
        "threads": torch.get_num_threads(),
    }
    console.print(
        f"minibatch CKA, {layers}x{layers} layer pairs: {result['samples_per_s']} samples/s", highlight=False
    )
    print(json.dumps(result))


def register(app: typer.Typer, bench: typer.Typer) -> None:
    """Add the analysis commands to the root CLI and its benchmarks to ``geosane bench``."""
    app.command("probe")(probe)
    app.command("cka")(cka)
    bench.command("cka")(bench_cka)
