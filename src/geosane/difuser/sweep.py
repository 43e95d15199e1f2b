"""Seed sweeps of one SatDiFuser experiment: ``seeds: [0, 1, 2]`` runs it once per training seed.

Each seed is a complete ``difuse`` run in ``OUTPUT_DIR/seed<k>/`` with ``train.seed = k`` (fuser and
head initialisation, data order); the data split, the frozen UNet and its cached features are the
same for every seed, so the spread measures the training's variance alone. The sweep writes::

    OUTPUT_DIR/sweep.json     per-seed headline metrics, and mean / std / min / max over the seeds
    OUTPUT_DIR/report.md      the same as a Markdown table (mean ± sample std)
    OUTPUT_DIR/config.yaml    the composed config, seeds included

``resume=True`` resumes the seeds that have a checkpoint and runs the others; without it, a seed
directory that already holds a run is refused before anything is written.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geosane.config import save_config
from geosane.console import console
from geosane.difuser.config import DifuseConfig
from geosane.errors import ConfigError, GeosaneError, cli_flags
from geosane.io import check_out_dir, claim_out_dir, write_json, write_text

__all__ = ["aggregate", "run_difuse_sweep", "seed_config", "sweep_markdown"]

# headline values of a run's report that the sweep aggregates (report key, table label)
AGGREGATED = (
    ("select", "select {metric}"),
    ("test", "test {metric}"),
    ("test_macro_f1", "test macro F1"),
    ("best_epoch", "best epoch"),
    ("train_seconds", "train s"),
)


def seed_config(cfg: DifuseConfig, seed: int) -> DifuseConfig:
    """The single run of ``seed``: ``train.seed = seed``, ``output_dir/seed<seed>``, no seed list."""
    train = dataclasses.replace(cfg.train, seed=int(seed))
    return dataclasses.replace(cfg, train=train, seeds=None, output_dir=Path(cfg.output_dir) / f"seed{seed}")


def _stats(values: Sequence[float]) -> dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": n}


def aggregate(reports: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation (n - 1), min and max of each headline value over the runs."""
    out: dict[str, dict[str, float]] = {}
    for key, _ in AGGREGATED:
        values = [float(r[key]) for r in reports if r.get(key) is not None]
        if values:
            out[key] = _stats(values)
    return out


def sweep_markdown(summary: dict[str, Any]) -> str:
    """The sweep as a Markdown table: one row per seed, then mean ± std."""
    metric = str(summary["metric"])
    keys = [(k, label.format(metric=metric)) for k, label in AGGREGATED if k in summary["aggregate"]]

    def fmt(key: str, value: float) -> str:
        if key in ("best_epoch", "train_seconds"):
            return f"{value:.1f}"
        return f"{value:.4f}"

    lines = [
        f"# SatDiFuser seed sweep: {str(summary['fuser']).upper()} fuser, {summary['task']}",
        "",
        f"{len(summary['seeds'])} seeds ({', '.join(str(s) for s in summary['seeds'])}); each seed sets "
        "train.seed (fuser / head initialisation, data order); split and UNet features are shared. "
        "std is the sample standard deviation (n - 1).",
        "",
        "| seed | " + " | ".join(label for _, label in keys) + " |",
        "|---|" + "---|" * len(keys),
    ]
    for run in summary["runs"]:
        cells = [fmt(k, float(run[k])) if run.get(k) is not None else "-" for k, _ in keys]
        lines.append(f"| {run['seed']} | " + " | ".join(cells) + " |")
    agg = summary["aggregate"]
    cells = [f"**{fmt(k, agg[k]['mean'])} ± {fmt(k, agg[k]['std'])}**" for k, _ in keys]
    lines.append("| mean ± std | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_difuse_sweep(cfg: DifuseConfig, resume: bool = False) -> dict[str, Any]:
    """Run ``cfg`` once per seed of ``cfg.seeds`` (:func:`geosane.difuser.train.run_difuse`) and aggregate;
    returns (and writes) the summary."""
    from geosane.difuser.train import run_difuse

    seeds = list(cfg.seeds or [])
    if not seeds:
        raise ConfigError("seeds is empty: give at least one training seed (seeds=[0,1,2])")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds {seeds} repeats a seed")
    out = Path(cfg.output_dir).expanduser()
    runs = [seed_config(cfg, s) for s in seeds]
    started = [r for r in runs if (Path(r.output_dir) / "checkpoints" / "last.ckpt").is_file()]
    if started and not resume:
        raise GeosaneError(
            f"{started[0].output_dir} already holds a training run; pass resume=True or choose another output_dir",
            flags=cli_flags("resume"),
        )
    if resume and not started:
        raise GeosaneError(f"resume=True: no seed of {out} has a checkpoint yet", flags=cli_flags("resume"))
    inputs = {"task.root": cfg.task.root, "cache_dir": cfg.cache_dir}
    check_out_dir(out, "difuse-sweep", inputs)
    for r in runs:
        check_out_dir(r.output_dir, "difuse", inputs)
    claim_out_dir(out, "difuse-sweep", inputs)
    save_config(cfg, out / "config.yaml")
    reports: list[dict[str, Any]] = []
    metric, fuser, task = "accuracy", str(cfg.fuser.name), str(cfg.task.kind)
    for seed, r in zip(seeds, runs, strict=True):
        console.print(f"[bold]seed {seed}[/] ({len(reports) + 1}/{len(seeds)}) -> {r.output_dir}")
        resumed = (Path(r.output_dir) / "checkpoints" / "last.ckpt").is_file()
        report = run_difuse(r, resume=resumed)
        reports.append(
            {"seed": seed, "output_dir": str(r.output_dir), **{k: report.get(k) for k, _ in AGGREGATED}}
        )
        metric = str(report.get("metric", "accuracy"))
        fuser, task = str(report.get("fuser", fuser)), str(report.get("task", task))
    summary: dict[str, Any] = {
        "format": "geosane-difuse-sweep",
        "fuser": fuser,
        "task": task,
        "metric": metric,
        "seeds": seeds,
        "runs": reports,
        "aggregate": aggregate(reports),
    }
    write_json(out / "sweep.json", summary)
    write_text(out / "report.md", sweep_markdown(summary))
    test = summary["aggregate"]["test"]
    console.print(
        f"[bold]{str(fuser).upper()} over {len(seeds)} seeds[/]: test {metric} "
        f"{test['mean']:.4f} ± {test['std']:.4f} -> {out / 'report.md'}"
    )
    return summary
