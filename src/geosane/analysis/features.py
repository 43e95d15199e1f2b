"""Layer features of a backbone on a data split, extracted once and cached on disk.

A cache file holds one (model, layer, split) feature tensor: ``CACHE/<model key>/<data key>/<split>/
<layer>.<representation>.safetensors``. The model key hashes the weights and architecture, the data
key the images, normalization and split indices, so a rerun with the same model and data reads the
files back without running the model, and anything that changes the features gets new files.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from rich.progress import Progress
from safetensors import SafetensorError
from safetensors.torch import load_file

from geosane.analysis.data import AnalysisData
from geosane.analysis.layers import (
    LayerRecorder,
    Pooling,
    num_prefix_tokens,
    output_map,
    pool_output,
    time_tokens,
)
from geosane.analysis.models import Backbone
from geosane.analysis.temporal import temporal_frames
from geosane.console import make_progress
from geosane.io import save_safetensors
from geosane.runs import torch_threads  # re-exported: the analysis commands' old import path

__all__ = ["FeatureCache", "extract_features", "progress_bars", "resolve_device", "torch_threads"]

MAP = "map"  # representation of spatial maps for segmentation probes


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def progress_bars(enabled: bool = True) -> Progress:
    """geosane's progress display, silent when ``enabled`` is False (Python API callers, tests)."""
    progress = make_progress()
    progress.disable = not enabled
    return progress


@torch.no_grad()
def extract_features(
    backbone: Backbone,
    images: torch.Tensor,
    data: AnalysisData,
    layers: Sequence[str],
    representation: Pooling | str,
    batch_size: int = 64,
    device: torch.device | None = None,
    progress: Progress | None = None,
    description: str = "features",
) -> dict[str, torch.Tensor]:
    """Features of ``layers`` for raw ``images`` in one pass: pooled ``[N, D]`` or maps ``[N, C, h, w]``.

    Temporal stacks ``[N, T, C, H, W]`` go whole to a natively temporal model; a single-image model
    runs on every frame and its features keep the frames, ``[N, T, D]`` or ``[N, T, C, h, w]``
    (aggregated later, :mod:`geosane.analysis.temporal`)."""
    device = device or torch.device("cpu")
    model = backbone.model.to(device).eval()
    frames = int(images.shape[1]) if images.ndim == 5 and temporal_frames(model) is None else 0
    if frames:
        batch_size = max(batch_size // frames, 1)  # the same number of frames per forward pass
    prefix = num_prefix_tokens(model)
    normalization = backbone.inputs(data.normalization)
    parts: dict[str, list[torch.Tensor]] = {layer: [] for layer in layers}
    task = progress.add_task(description, total=images.shape[0], status="") if progress else None
    with LayerRecorder(model, layers) as recorder:
        for start in range(0, images.shape[0], batch_size):
            batch = normalization(images[start : start + batch_size]).to(device)
            outputs = recorder.run(batch.flatten(0, 1) if frames else batch)
            for layer in layers:
                out = outputs[layer]
                if representation == MAP:
                    out = output_map(out, prefix, layer, time_tokens(model))
                else:
                    out = pool_output(out, representation, prefix, layer)  # type: ignore[arg-type]
                if frames:
                    out = out.unflatten(0, (-1, frames))
                parts[layer].append(out.float().cpu())
            if progress is not None and task is not None:
                progress.advance(task, batch.shape[0])
    if progress is not None and task is not None:
        progress.remove_task(task)
    return {layer: torch.cat(chunks) for layer, chunks in parts.items()}


class FeatureCache:
    """Disk cache of layer features; counts what it computed and what it read back."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.computed = 0
        self.loaded = 0

    def path(
        self, backbone: Backbone, data: AnalysisData, split: str, layer: str, representation: str
    ) -> Path:
        return self.root / backbone.key / data.key / split / f"{layer}.{representation}.safetensors"

    def _read(self, path: Path) -> torch.Tensor | None:
        if not path.is_file():
            return None
        try:
            return load_file(str(path))["features"]
        except (SafetensorError, OSError, KeyError):
            return None  # unreadable (e.g. truncated by a crash outside our atomic writes): recompute

    def features(
        self,
        backbone: Backbone,
        data: AnalysisData,
        split: str,
        layers: Sequence[str],
        representation: str,
        batch_size: int = 64,
        device: torch.device | None = None,
        progress: Progress | None = None,
    ) -> dict[str, torch.Tensor]:
        """Features of ``layers`` on ``split``: read from the cache, extracting only missing layers."""
        found: dict[str, torch.Tensor] = {}
        for layer in layers:
            tensor = self._read(self.path(backbone, data, split, layer, representation))
            if tensor is not None:
                found[layer] = tensor
        self.loaded += len(found)
        missing = [layer for layer in layers if layer not in found]
        if missing:
            fresh = extract_features(
                backbone,
                data.splits[split].images,
                data,
                missing,
                representation,
                batch_size,
                device,
                progress,
                f"{backbone.name}: {split} features",
            )
            for layer, tensor in fresh.items():
                meta = {
                    "model": backbone.name,
                    "source": backbone.loaded.source,
                    "layer": layer,
                    "split": split,
                }
                save_safetensors(
                    {"features": tensor}, self.path(backbone, data, split, layer, representation), meta
                )
            self.computed += len(fresh)
            found.update(fresh)
        return {layer: found[layer] for layer in layers}
