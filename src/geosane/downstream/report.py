"""``compare`` outputs: results.csv, summary statistics, report.md and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geosane.downstream.finetuning import FinetuneResult
from geosane.io import atomic_path

__all__ = [
    "TARGET_POINTS",
    "InitSummary",
    "mean_std",
    "plot_curves",
    "plot_final",
    "render_report",
    "results_rows",
    "save_figure",
    "summarize",
    "verdict",
]

TARGET_POINTS = 10.0


@dataclass
class InitSummary:
    """Test and selection metric over seeds for one initialization."""

    name: str
    kind: str
    source: str
    test_mean: float
    test_std: float
    select_mean: float
    select_std: float
    values: list[float]
    wall_s_mean: float


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation over seeds, NaN values (failed metrics) left out."""
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return float("nan"), float("nan")
    return statistics.fmean(finite), statistics.stdev(finite) if len(finite) > 1 else 0.0


def summarize(
    results: dict[str, list[FinetuneResult]], kinds: dict[str, str], sources: dict[str, str]
) -> list[InitSummary]:
    out = []
    for name, runs in results.items():
        test_mean, test_std = mean_std([r.test for r in runs])
        select_mean, select_std = mean_std([r.select for r in runs])
        out.append(
            InitSummary(
                name, kinds[name], sources[name], test_mean, test_std, select_mean, select_std,
                [r.test for r in runs], statistics.fmean(r.wall_s for r in runs),
            )
        )  # fmt: skip
    return out


def results_rows(results: dict[str, list[FinetuneResult]], kinds: dict[str, str]) -> list[dict[str, Any]]:
    """One row per (init, seed, epoch); the test metric sits on each run's last epoch."""
    rows = []
    for name, runs in results.items():
        for run in runs:
            metric = run.metric
            for i, h in enumerate(run.history):
                last = i == len(run.history) - 1
                rows.append(
                    {
                        "init": name,
                        "kind": kinds[name],
                        "seed": run.seed,
                        "epoch": int(h.get("epoch", i + 1)),
                        "train_loss": h.get("train_loss", float("nan")),
                        "lr": h.get("lr", float("nan")),
                        f"select_{metric}": h.get(f"val_{metric}", float("nan")),
                        f"test_{metric}": run.test if last else "",
                        "wall_s": run.wall_s if last else "",
                    }
                )
    return rows


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.1f}"


def verdict(summaries: list[InitSummary], metric: str) -> str:
    """An honest sentence: does generated beat scratch by >= 10 points, and the zoo baselines?"""
    by_name = {s.name: s for s in summaries}
    generated = [s for s in summaries if s.kind == "generated"]
    if not generated:
        return "No generated initialization was compared, so nothing can be said about generated weights."
    gen = generated[0]  # rank 1 by the generator's proxy, fixed before any fine-tuning
    parts = [
        f"Generated weights (rank-1 candidate) reach {_pct(gen.test_mean)} ± {_pct(gen.test_std)} test {metric}"
    ]
    scratch = by_name.get("scratch")
    if scratch is not None:
        gap = 100 * (gen.test_mean - scratch.test_mean)
        meets = "meets" if gap >= TARGET_POINTS else "does NOT meet"
        parts.append(
            f"{gap:+.1f} points vs scratch ({_pct(scratch.test_mean)}), which {meets} the target of beating scratch by >= {TARGET_POINTS:.0f} points"
        )
    else:
        parts.append("scratch was not run, so the >= 10-point target cannot be checked")
    beaten, not_beaten, missing = [], [], []
    for name, label in (
        ("zoo_average", "the zoo average"),
        ("ties", "TIES"),
        ("dare", "DARE"),
        ("prompt", "the prompt"),
    ):
        other = by_name.get(name)
        if other is None:
            missing.append(label)
            continue
        diff = 100 * (gen.test_mean - other.test_mean)
        noise = 100 * max(gen.test_std, other.test_std)
        entry = f"{label} ({_pct(other.test_mean)}, {diff:+.1f})"
        if diff > 0:
            beaten.append(entry + (" within seed noise" if diff <= noise else ""))
        else:
            not_beaten.append(entry)
    sentence = "; ".join(parts) + "."
    if beaten:
        sentence += " It beats " + ", ".join(beaten) + "."
    if not_beaten:
        sentence += " It does NOT beat " + ", ".join(not_beaten) + "."
    if missing:
        sentence += " Not compared: " + ", ".join(missing) + "."
    return sentence


def render_report(
    summaries: list[InitSummary],
    metric: str,
    meta: dict[str, Any],
    notes: Sequence[str] = (),
) -> str:
    """Markdown report: setup, the table (mean ± std over seeds on the test split), the verdict."""
    seeds = meta["seeds"]
    lines = [
        "# geosane compare",
        "",
        f"- Task: {meta['task']} on {meta['data']} ({meta['num_classes']} classes, {meta['in_chans']} bands)",
        f"- Architecture: {meta['arch']}",
        f"- Splits: train {meta['sizes']['train']}, selection {meta['sizes']['select']}, test {meta['sizes']['test']} "
        "(the selection split is only used for per-epoch curves and any choice; results are on the test split)",
        f"- Budget (identical for every initialization and seed): {meta['budget']}",
        f"- Seeds: {', '.join(str(s) for s in seeds)}",
        f"- Compute: {meta['runs']} fine-tuning runs, {meta['runs_wall_s'] / 60:.1f} min of run wall time in all "
        f"({meta['workers']} worker(s)); s/run below is the mean wall time of one run (build, training "
        "over any resumed attempts, test evaluation)",
        "",
        f"| initialization | source | test {metric} (%) mean ± std | selection {metric} (%) | per seed (test %) | s/run |",
        "|---|---|---|---|---|---|",
    ]
    for s in summaries:
        per_seed = ", ".join(_pct(v) for v in s.values)
        lines.append(
            f"| {s.name} | {s.source} | **{_pct(s.test_mean)} ± {_pct(s.test_std)}** | "
            f"{_pct(s.select_mean)} ± {_pct(s.select_std)} | {per_seed} | {s.wall_s_mean:.1f} |"
        )
    lines += ["", "## Verdict", "", verdict(summaries, metric), ""]
    if notes:
        lines += ["## Notes", "", *[f"- {n}" for n in notes], ""]
    lines += ["## Files", "", "- `results.csv`: per initialization, seed and epoch",
              "- `curves.png`: learning curves (mean ± std over seeds, selection split)",
              "- `final_metric.png`: final test metric, mean ± std over seeds", ""]  # fmt: skip
    return "\n".join(lines)


def save_figure(fig: Any, path: Path) -> None:
    """A matplotlib figure as a PNG, written atomically (every report plot goes through here)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")


def plot_curves(results: dict[str, list[FinetuneResult]], metric: str, path: Path) -> Path:
    """Train loss and selection metric per epoch, mean ± std over seeds, one line per init."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, runs in results.items():
        for ax, key in zip(axes, ("train_loss", f"val_{metric}"), strict=True):
            length = min(len(r.history) for r in runs)
            values = np.array(
                [[r.history[i].get(key, np.nan) for i in range(length)] for r in runs], dtype=float
            )
            epochs = np.array([runs[0].history[i].get("epoch", i + 1) for i in range(length)], dtype=float)
            seen = ~np.isnan(values).all(axis=0)  # an epoch-0 row (test_curve) has no training loss
            values, epochs = values[:, seen], epochs[seen]
            mean = np.nanmean(values, axis=0)  # sample std over seeds, as in the report's table
            std = np.nanstd(values, axis=0, ddof=1) if len(values) > 1 else np.zeros_like(mean)
            if key != "train_loss":
                mean, std = 100 * mean, 100 * std
            (line,) = ax.plot(epochs, mean, marker="o", markersize=3, label=name)
            ax.fill_between(epochs, mean - std, mean + std, color=line.get_color(), alpha=0.15)
    axes[0].set(xlabel="epoch", ylabel="train loss", title="Training loss")
    axes[1].set(xlabel="epoch", ylabel=f"{metric} (%)", title=f"Selection-split {metric}")
    axes[1].legend(fontsize=8, loc="lower right")
    for ax in axes:
        ax.grid(alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)
    return path


def plot_final(summaries: list[InitSummary], metric: str, path: Path) -> Path:
    """Bar chart of the final test metric with mean ± std error bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(summaries) + 2), 4))
    names = [s.name for s in summaries]
    means = [100 * s.test_mean for s in summaries]
    stds = [100 * s.test_std for s in summaries]
    colors = [
        "tab:red" if s.kind == "generated" else "tab:gray" if s.kind == "scratch" else "tab:blue"
        for s in summaries
    ]
    ax.bar(names, means, yerr=stds, capsize=4, color=colors)
    for i, (m, sd) in enumerate(zip(means, stds, strict=True)):
        ax.text(i, m + sd + 0.5, f"{m:.1f}", ha="center", va="bottom", fontsize=8)
    ax.set(ylabel=f"test {metric} (%)", title=f"Final test {metric} (mean ± std over seeds)")
    ax.tick_params(axis="x", rotation=30)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, path)
    plt.close(fig)
    return path
