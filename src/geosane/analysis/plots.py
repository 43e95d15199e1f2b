"""PNG figures of the analysis stage (matplotlib, Agg backend): depth profiles, CKA heatmaps and
diagonals, decoder bar charts. Every figure is written atomically."""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from geosane.io import atomic_path

__all__ = ["plot_cka_diagonal", "plot_cka_heatmap", "plot_decoder_bars", "plot_depth_profile"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def _percent(fraction: float) -> str:
    return f"{fraction * 100:g}% labels"


def plot_depth_profile(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Test metric against relative depth, one line per model (mean ± std over seeds), one panel per
    probe method and label fraction; the best block of each model is starred."""
    plt = _pyplot()
    panels = sorted({(r["method"], float(r["fraction"])) for r in rows}, key=lambda p: (p[0], -p[1]))
    cols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False, sharey=True, layout="constrained"
    )
    models = list(dict.fromkeys(r["model"] for r in rows))
    colors = plt.get_cmap("tab10")
    metric = rows[0]["metric"] if rows else ""
    for ax, (method, fraction) in zip(axes.flat, panels, strict=False):
        for m, model in enumerate(models):
            values: dict[float, list[float]] = defaultdict(list)
            for r in rows:
                if r["model"] == model and r["method"] == method and float(r["fraction"]) == fraction:
                    values[float(r["relative_depth"])].append(float(r["test"]))
            if not values:
                continue
            depth = np.array(sorted(values))
            mean = np.array([np.mean(values[d]) for d in depth])
            std = np.array([np.std(values[d]) for d in depth])
            ax.plot(depth, mean, marker="o", markersize=3.5, color=colors(m % 10), label=model)
            ax.fill_between(depth, mean - std, mean + std, color=colors(m % 10), alpha=0.15, linewidth=0)
            best = int(np.nanargmax(mean))
            ax.plot(
                depth[best], mean[best], marker="*", markersize=13, color=colors(m % 10), markeredgecolor="k"
            )
        ax.set_title(f"{method} probe, {_percent(fraction)}", fontsize=10)
        ax.set_xlim(0, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[:, 0]:
        ax.set_ylabel(f"test {metric}")
    for i, ax in enumerate(axes.flat):
        if i < len(panels) and i + cols >= len(panels):  # lowest panel of its column
            ax.set_xlabel("relative depth (layer / number of layers)")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=8, loc="best")
    fig.suptitle(title or f"Layerwise probing: test {metric} by depth (★ best layer)", fontsize=11)
    return _save(fig, path)


def _short(name: str) -> str:
    return name.replace("blocks.", "b").replace("layers.", "l").replace("stages.", "s")


def plot_cka_heatmap(
    matrix: torch.Tensor,
    layers_a: Sequence[str],
    layers_b: Sequence[str],
    path: Path,
    name_a: str,
    name_b: str,
    title: str = "",
) -> Path:
    """All layers of model A (rows) against all layers of model B (columns), CKA in [0, 1]."""
    plt = _pyplot()

    def side(count: int) -> float:
        return min(max(4.0, 0.14 * count + 2.5), 12.0)

    fig, ax = plt.subplots(figsize=(side(len(layers_b)) + 1.5, side(len(layers_a))), layout="constrained")
    image = ax.imshow(
        matrix.numpy(), vmin=0, vmax=1, cmap="magma", origin="lower", interpolation="nearest", aspect="auto"
    )
    for axis, layers, setter in ((0, layers_a, ax.set_yticks), (1, layers_b, ax.set_xticks)):
        step = max(1, math.ceil(len(layers) / 40))
        ticks = list(range(0, len(layers), step))
        setter(ticks, [_short(layers[i]) for i in ticks], fontsize=6, rotation=90 if axis else 0)
    ax.set_ylabel(f"{name_a} layers")
    ax.set_xlabel(f"{name_b} layers")
    fig.colorbar(image, ax=ax, label="CKA")
    ax.set_title(title or f"CKA: {name_a} vs {name_b}", fontsize=11)
    return _save(fig, path)


def plot_cka_diagonal(pairs: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """CKA of matching layers along depth, one line per layer kind (block, attn, mlp.fc1, ...)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 3.8))
    kinds = list(dict.fromkeys(p["kind"] for p in pairs))
    colors = plt.get_cmap("tab10")
    for k, kind in enumerate(kinds):
        pts = [p for p in pairs if p["kind"] == kind]
        ax.plot(
            [p["relative_depth"] for p in pts],
            [p["cka"] for p in pts],
            marker="o",
            markersize=3.5,
            color=colors(k % 10),
            label=kind,
        )
    lowest = min(pairs, key=lambda p: p["cka"])
    ax.annotate(
        _short(lowest["layer_a"]),
        (lowest["relative_depth"], lowest["cka"]),
        textcoords="offset points",
        xytext=(4, -12),
        fontsize=8,
    )
    ax.set_xlabel("relative depth (layer / number of layers)")
    ax.set_ylabel("CKA (same layer in A and B)")
    ax.set_ylim(min(0.0, lowest["cka"] - 0.05), 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=min(len(kinds), 4))
    ax.set_title(title or "CKA of matching layers", fontsize=11)
    return _save(fig, path)


_METRIC_NAMES = {"miou": "mIoU", "r2": "R²"}


def plot_decoder_bars(rows: Sequence[dict[str, Any]], path: Path, title: str = "") -> Path:
    """Test metric per decoder, frozen vs fine-tuned backbone (mean over seeds, error bar = std).

    One panel per model. With one label fraction: bars per decoder; with several: the metric
    against the label fraction (log axis), one line per decoder and adaptation (solid frozen, dashed
    fine-tuned), error bars of one standard deviation over seeds.
    """
    plt = _pyplot()
    models = list(dict.fromkeys(r["model"] for r in rows))
    decoders = list(dict.fromkeys(r["decoder"] for r in rows))
    adaptations = list(dict.fromkeys(r["adaptation"] for r in rows))
    fractions = sorted({float(r.get("fraction", 1.0)) for r in rows})
    metric = str(rows[0]["metric"]) if rows else "miou"

    def stats(model: str, decoder: str, adaptation: str, fraction: float) -> tuple[float, float]:
        vals = [
            float(r["test"])
            for r in rows
            if r["model"] == model
            and r["decoder"] == decoder
            and r["adaptation"] == adaptation
            and float(r.get("fraction", 1.0)) == fraction
        ]
        return (float(np.mean(vals)), float(np.std(vals))) if vals else (float("nan"), 0.0)

    lines = len(fractions) > 1
    width_per_model = 4.6 if lines else 1.6 + 0.9 * len(decoders) * len(adaptations)
    fig, axes = plt.subplots(
        1, len(models), figsize=(width_per_model * len(models) + 0.6, 3.8), squeeze=False, sharey=True
    )
    colors = {"frozen": "#6baed6", "finetuned": "#fd8d3c"}
    palette = plt.get_cmap("tab10")
    seeds = len({r["seed"] for r in rows})
    for ax, model in zip(axes[0], models, strict=True):
        if lines:
            series = [(d, decoder, a) for d, decoder in enumerate(decoders) for a in adaptations]
            for k, (d, decoder, adaptation) in enumerate(series):
                points = [stats(model, decoder, adaptation, f) for f in fractions]
                dodge = 1.0 + 0.025 * (k - (len(series) - 1) / 2)  # side by side on the log axis
                ax.errorbar(
                    [f * dodge for f in fractions],
                    [p[0] for p in points],
                    yerr=[p[1] for p in points],
                    marker="o",
                    markersize=4,
                    capsize=3,
                    color=palette(d % 10),
                    linestyle="-" if adaptation == "frozen" else "--",
                    label=f"{decoder} {adaptation}",
                )
            ax.set_xscale("log")
            ax.set_xticks(fractions, [f"{f * 100:g}%" for f in fractions])
            ax.minorticks_off()
            ax.set_xlabel("label fraction of the train split")
        else:
            width = 0.8 / len(adaptations)
            for a, adaptation in enumerate(adaptations):
                points = [stats(model, decoder, adaptation, fractions[0]) for decoder in decoders]
                x = np.arange(len(decoders)) + (a - (len(adaptations) - 1) / 2) * width
                bars = ax.bar(
                    x,
                    [p[0] for p in points],
                    width,
                    yerr=[p[1] for p in points],
                    capsize=3,
                    label=adaptation,
                    color=colors.get(adaptation),
                )
                ax.bar_label(bars, fmt="%.2f", fontsize=7, padding=2)
            ax.set_xticks(range(len(decoders)), decoders)
        ax.set_title(model, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0, 0].set_ylabel(f"test {_METRIC_NAMES.get(metric, metric)}")
    axes[0, 0].legend(fontsize=7, loc="best")
    labels = "" if lines else f", {_percent(fractions[0])}" if fractions else ""
    fig.suptitle(
        title or f"Decoders x adaptation, same budget (mean ± std over {seeds} seed(s){labels})", fontsize=11
    )
    return _save(fig, path)
