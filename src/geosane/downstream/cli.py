"""``geosane finetune``, ``geosane evaluate``, ``geosane compare``, ``geosane merge`` and ``geosane bench finetune``."""

from __future__ import annotations

import json
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import typer

from geosane.console import console

__all__ = ["register"]

_CONFIG_HELP = "YAML config file, or the name of a packaged preset (e.g. rsscn7, csmask, compare_rsscn7)."
_OVERRIDES_HELP = "Dotted overrides key=value, e.g. train.epochs=5 data.image_size=32."


def _overrides(overrides: list[str] | None, **flags: object) -> dict[str, Any]:
    """Positional ``key=value`` overrides, then the command-line flags (taken verbatim, not as YAML)."""
    from geosane.config import merge, parse_overrides
    from geosane.downstream.config import dotted_overrides

    flag_values = {key: str(value) for key, value in flags.items() if value is not None}
    return merge(parse_overrides(overrides or []), dotted_overrides(flag_values))


def finetune_command(
    config: str = typer.Argument(..., help=_CONFIG_HELP),
    overrides: list[str] | None = typer.Argument(None, help=_OVERRIDES_HELP),
    init: str | None = typer.Option(
        None,
        "--init",
        help="Initialization: scratch, a model source, a zoo:DIR#ID, a generate dir or candidate file.",
    ),
    out: Path | None = typer.Option(None, "--out", help="Output directory of the run."),
    data: Path | None = typer.Option(None, "--data", help="Training data (data.root)."),
    test_data: Path | None = typer.Option(
        None, "--test-data", help="Evaluate on this separate folder (same classes)."
    ),
    select_data: Path | None = typer.Option(
        None, "--select-data", help="Use this separate folder as the selection split."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace a finished run made with other settings."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON on stdout."),
) -> None:
    """Fine-tune one initialization on a task; writes metrics.json, history.csv and weights.safetensors."""
    from geosane.downstream.config import load_finetune_config

    cfg = load_finetune_config(
        config,
        _overrides(
            overrides,
            init=init,
            out=out,
            **{"data.root": data, "data.test_data": test_data, "data.select_data": select_data},
        ),
    )
    from geosane.downstream.finetuning import finetune  # heavy imports after the config is checked

    result = finetune(cfg, overwrite=overwrite)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        console.print(
            f"[bold]{result.init}[/] seed {result.seed}: test {result.metric} {100 * result.test:.2f}%, "
            f"selection {100 * result.select:.2f}% ({result.wall_s:.1f} s) -> {result.out_dir}"
        )


def evaluate_command(
    config: str = typer.Argument(..., help=_CONFIG_HELP),
    overrides: list[str] | None = typer.Argument(None, help=_OVERRIDES_HELP),
    init: str = typer.Option(
        ..., "--init", help="The trained model: a model source, a zoo:DIR#ID, a generate dir."
    ),
    data: Path | None = typer.Option(None, "--data", help="Task data (data.root)."),
    test_data: Path | None = typer.Option(None, "--test-data", help="Evaluate on this separate folder too."),
    out: Path | None = typer.Option(None, "--out", help="Write evaluation.json here (optional)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Evaluate a trained model as it is (its own head, no training) on a task, per class."""
    from geosane.downstream.config import load_finetune_config

    cfg = load_finetune_config(
        config, _overrides(overrides, init=init, **{"data.root": data, "data.test_data": test_data})
    )
    from geosane.downstream.evaluation import evaluate_source, print_evaluation

    result = evaluate_source(cfg, out)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        print_evaluation(result)


def compare_command(
    config: str = typer.Argument(..., help=_CONFIG_HELP),
    overrides: list[str] | None = typer.Argument(None, help=_OVERRIDES_HELP),
    out: Path | None = typer.Option(
        None, "--out", help="Output directory (report.md, results.csv, plots, runs/)."
    ),
    generated: Path | None = typer.Option(None, "--generated", help="A `geosane generate` output directory."),
    zoo: Path | None = typer.Option(
        None, "--zoo", help="Zoo directory for the average / TIES / DARE baselines."
    ),
    prompt: str | None = typer.Option(
        None, "--prompt", help="The prompt model source (default: the generated model card's)."
    ),
    data: Path | None = typer.Option(None, "--data", help="Training data (data.root)."),
    test_data: Path | None = typer.Option(
        None, "--test-data", help="Evaluate on this separate folder (same classes)."
    ),
    workers: int | None = typer.Option(
        None, "--workers", help="Fine-tunings run at once (processes); default 1."
    ),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Redo runs whose settings changed instead of refusing."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Fine-tune one architecture from several initializations (same budget, >= 3 seeds) and report."""
    from geosane.downstream.config import load_compare_config

    flags = {
        "out": out,
        "prompt": prompt,
        "generated.dir": generated,
        "zoo.dir": zoo,
        "data.root": data,
        "data.test_data": test_data,
        "workers": workers,
    }
    cfg = load_compare_config(config, _overrides(overrides, **flags))
    from geosane.downstream.comparison import compare  # heavy imports after the config is checked

    result = compare(cfg, overwrite=overwrite)
    if as_json:
        print(
            json.dumps(
                {
                    "metric": result.metric,
                    "verdict": result.verdict,
                    "inits": [s.__dict__ for s in result.summaries],
                    "report": str(result.report),
                    "wall_s": result.wall_s,
                    "runs_wall_s": result.runs_wall_s,
                },
                indent=2,
            )
        )
        return
    from rich.table import Table

    table = Table(title=f"test {result.metric} (%), mean ± std over {len(cfg.seeds)} seeds")
    for column in ("initialization", "test", "selection", "s/run"):
        table.add_column(column)
    for s in result.summaries:
        table.add_row(
            s.name,
            f"{100 * s.test_mean:.1f} ± {100 * s.test_std:.1f}",
            f"{100 * s.select_mean:.1f} ± {100 * s.select_std:.1f}",
            f"{s.wall_s_mean:.1f}",
        )
    console.print(table)
    console.print(result.verdict, highlight=False)
    console.print(
        f"report: {result.report} ({result.wall_s / 60:.1f} min this call, "
        f"{result.runs_wall_s / 60:.1f} min of fine-tuning runs in all)"
    )


def merge_command(
    members: list[str] = typer.Argument(..., help="Model sources to merge (same architecture)."),
    out: Path = typer.Option(..., "--out", help="Output .safetensors file."),
    method: str = typer.Option("average", "--method", help="average | ties | dare"),
    base: str | None = typer.Option(
        None, "--base", help="The shared base the members were fine-tuned from (ties, dare)."
    ),
    arch: str | None = typer.Option(
        None, "--arch", help="timm architecture name, for weight files without one."
    ),
    density: float = typer.Option(0.2, "--density", help="TIES: fraction of each task vector kept."),
    lam: float = typer.Option(1.0, "--lam", help="TIES/DARE: scale of the merged task vector."),
    drop_rate: float = typer.Option(0.5, "--drop-rate", help="DARE: probability of dropping a delta entry."),
    seed: int = typer.Option(0, "--seed", help="DARE: seed of the drop masks."),
) -> None:
    """Merge same-architecture models (uniform average, TIES or DARE) into one safetensors file."""
    from geosane.downstream.inits import load_source
    from geosane.downstream.merges import average_merge, dare_merge, ties_merge
    from geosane.errors import GeosaneError
    from geosane.io import save_safetensors
    from geosane.zoo import ArchSpec

    if method not in ("average", "ties", "dare"):
        raise GeosaneError(f"unknown merge method '{method}' (average, ties, dare)")
    if method != "average" and base is None:
        raise GeosaneError(f"--method {method} needs --base (the model the members were fine-tuned from)")
    spec = ArchSpec("timm", arch) if arch else None
    loaded = [load_source(m, spec) for m in members]
    spec = spec or loaded[0].arch
    states = [m.state_dict for m in loaded]
    if method == "average":
        result = average_merge(states, members)
    else:
        base_state = load_source(base or "", spec).state_dict
        if method == "ties":
            result = ties_merge(base_state, states, density, lam, members)
        else:
            result = dare_merge(base_state, states, drop_rate, lam, seed, names=members)
    meta = {"method": method, "members": json.dumps(members), "base": base or ""}
    if spec is not None:
        meta["arch"] = json.dumps(spec.to_dict())
    save_safetensors(result.state_dict, out, metadata=meta)
    console.print(f"{method} of {len(members)} models -> {out} ({result.summary()})")


def bench_finetune_command(
    config: str = typer.Argument(..., help=_CONFIG_HELP),
    overrides: list[str] | None = typer.Argument(None, help=_OVERRIDES_HELP),
    data: Path | None = typer.Option(None, "--data", help="Training data (data.root)."),
    repeats: int = typer.Option(1, "--repeats", help="Timed runs (different seeds)."),
    as_json: bool = typer.Option(False, "--json", help="Print the timings as JSON on stdout."),
) -> None:
    """Wall time of one fine-tuning run (data loaded once; nothing written)."""
    import dataclasses
    import os
    import time

    import torch

    from geosane.downstream.config import load_finetune_config
    from geosane.downstream.data import load_task_data
    from geosane.downstream.finetuning import build_task_model, initialization_from_source
    from geosane.tasks import evaluate, fit

    cfg = load_finetune_config(config, _overrides(overrides, **{"data.root": data}))
    start = time.perf_counter()
    task_data = load_task_data(cfg.data, cfg.task.kind)
    load_s = time.perf_counter() - start
    init = initialization_from_source(cfg.init, cfg.arch)
    timings, cpu = [], []
    for seed in range(repeats):
        torch.manual_seed(seed)
        start, start_cpu = time.perf_counter(), time.process_time()
        model = build_task_model(init, task_data, cfg.task)
        train_config = dataclasses.replace(cfg.train, seed=seed)
        kind, train, select_set, test_set = task_data.image_task()
        fit(model, kind, task_data.num_classes, train, select_set, train_config)
        metric = evaluate(model, kind, task_data.num_classes, test_set)
        timings.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    num_train = len(cast(Sized, task_data.train))
    images = cfg.train.epochs * num_train
    record = {
        "arch": init.arch.name,
        "sizes": task_data.sizes(),
        "epochs": cfg.train.epochs,
        "image_size": cfg.data.image_size,
        "threads": torch.get_num_threads(),
        "data_load_s": load_s,
        "run_s": timings,
        "run_cpu_s": cpu,
        "load_average": os.getloadavg()[0],
        "train_images_per_s": images / min(timings),
        "last_metric": metric,
    }
    if as_json:
        print(json.dumps(record, indent=2))
    else:
        console.print(
            f"{init.arch.name} at {cfg.data.image_size}px, {cfg.train.epochs} epochs on {num_train} images: "
            f"{min(timings):.1f} s per run (best of {repeats}; {min(cpu):.1f} s CPU; "
            f"{record['train_images_per_s']:.0f} train images/s, {torch.get_num_threads()} threads, "
            f"load average {record['load_average']:.1f}); data loading {load_s:.1f} s; {metric}"
        )


def register(app: typer.Typer, bench: typer.Typer) -> None:
    app.command("finetune")(finetune_command)
    app.command("evaluate")(evaluate_command)
    app.command("compare")(compare_command)
    app.command("merge")(merge_command)
    bench.command("finetune")(bench_finetune_command)
