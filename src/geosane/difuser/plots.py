"""PNG heatmaps of learned fusion weights / MoE gate statistics and of confusion matrices (Agg backend)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from geosane.io import atomic_path

__all__ = ["plot_confusion", "plot_fusion_weights"]


def _heatmap(matrix: np.ndarray, rows: list[str], cols: list[str], title: str, path: Path, fmt: str) -> Path:
    height = 1.2 + 0.45 * len(rows)
    width = 2.5 + 0.9 * len(cols)
    fig, ax = plt.subplots(figsize=(min(max(width, 4.5), 16), min(max(height, 3.0), 14)))
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    top = float(matrix.max()) if matrix.size else 0.0
    if matrix.size <= 400:
        for (i, j), value in np.ndenumerate(matrix):
            colour = "black" if value > 0.6 * top else "white"
            ax.text(j, i, format(value, fmt), ha="center", va="center", fontsize=7, color=colour)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return Path(path)


def plot_fusion_weights(summary: dict[str, Any], path: str | Path, title: str = "fusion weights") -> Path:
    """Heatmap of ``summary['heatmap']`` (rows x columns as labelled in the summary).

    GW / LW: rows are timesteps, columns are feature groups (scales or layers), cells the weight a
    stream gets. MoE: rows are (timestep, scale), columns experts, cells the mean routing weight.
    """
    matrix = np.asarray(summary["heatmap"], dtype=float)
    subtitle = {"gw": "softmax weight per stream", "lw": "mean per-pixel weight", "moe": "mean expert weight"}
    full = f"{title}: {subtitle.get(summary.get('fuser', ''), '')}"
    return _heatmap(matrix, list(summary["rows"]), list(summary["columns"]), full, Path(path), ".2f")


def plot_confusion(confusion: dict[str, Any], path: str | Path) -> Path:
    """Row-normalised confusion matrix (rows = true class, columns = predicted class)."""
    counts = np.asarray(confusion["counts"], dtype=float)
    normalised = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    classes = list(confusion["classes"])
    return _heatmap(
        normalised,
        [f"true {c}" for c in classes],
        [f"pred {c}" for c in classes],
        "confusion (row-normalised recall)",
        Path(path),
        ".2f",
    )
