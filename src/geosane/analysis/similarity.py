"""``geosane cka``: CKA between every layer of two models on the same inputs.

Typical pairs: a pretrained model and its fine-tuned version, a generated model and a zoo member.
Both models see the same batches; each layer's output is flattened (or pooled) to ``[n, features]``
and fed to the minibatch estimator (unbiased HSIC averaged over batches, float64) or collected for a
full-batch linear / debiased CKA. Outputs: ``cka.csv`` (every layer pair), ``cka_heatmap.png``,
``cka_diagonal.png`` (matching layers along depth) and ``summary.json``.

Temporal stacks ``[N, T, C, H, W]``: a natively temporal model takes them whole; a single-image
model runs per frame and each layer's pooled output is averaged over T (``temporal.aggregation:
mean``; ``ltae`` has trained weights, which a comparison of fixed representations has not).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from geosane.analysis.cka import MinibatchCKAMatrix, cka_matrix
from geosane.analysis.config import CkaConfig
from geosane.analysis.data import load_analysis_data
from geosane.analysis.features import progress_bars, resolve_device, torch_threads
from geosane.analysis.layers import LayerRecorder, block_layers, num_prefix_tokens, pool_output
from geosane.analysis.plots import plot_cka_diagonal, plot_cka_heatmap
from geosane.analysis.probing import PreparedModel, prepare_models, write_csv
from geosane.config import save_config
from geosane.console import console
from geosane.errors import ConfigError, DataError
from geosane.io import claim_out_dir, write_json

__all__ = ["CkaResult", "diagonal_pairs", "layer_kind", "run_cka"]

MIN_BATCH = 4  # the unbiased HSIC needs at least four samples


@dataclass
class CkaResult:
    """The ``[layers A, layers B]`` CKA matrix, layer names, matched pairs and the files written."""

    matrix: torch.Tensor
    layers_a: list[str]
    layers_b: list[str]
    diagonal: list[dict[str, Any]]
    csv_path: Path
    heatmap_path: Path
    diagonal_path: Path
    summary: dict[str, Any] = field(default_factory=dict)


def layer_kind(path: str, blocks: set[str], module: torch.nn.Module) -> str:
    """``block`` for a block/stage, the sub-layer name for ``attn``/``mlp.fc1``/``mlp.fc2``, else the
    module type (``conv2d``, ``linear``)."""
    if path in blocks:
        return "block"
    for suffix in ("attn", "mlp.fc1", "mlp.fc2"):
        if path.endswith(f".{suffix}"):
            return suffix
    return type(module).__name__.lower()


def diagonal_pairs(a: PreparedModel, b: PreparedModel, matrix: torch.Tensor) -> list[dict[str, Any]]:
    """Matching layers: the same module path in both models, else the nearest relative depth."""
    shared = [p for p in a.layers if p in set(b.layers)]
    index_b = {p: j for j, p in enumerate(b.layers)}
    if shared:
        pairs = [(a.layers.index(p), index_b[p]) for p in shared]
    else:
        scale = (len(b.layers) - 1) / max(len(a.layers) - 1, 1)
        pairs = [(i, round(i * scale)) for i in range(len(a.layers))]
    blocks = set(block_layers(a.backbone.model))
    modules = dict(a.backbone.model.named_modules())
    return [
        {
            "layer_a": a.layers[i],
            "layer_b": b.layers[j],
            "index": i,
            "relative_depth": (i + 1) / len(a.layers),
            "cka": float(matrix[i, j]),
            "kind": layer_kind(a.layers[i], blocks, modules[a.layers[i]]),
        }
        for i, j in pairs
    ]


def _pooled(item: PreparedModel, outputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """Each layer's output pooled to ``[B, D]``; per-frame outputs ``[B * T, ...]`` averaged over T."""
    prefix = num_prefix_tokens(item.backbone.model)
    pooled = [pool_output(outputs[p], item.representation, prefix, p) for p in item.layers]  # type: ignore[arg-type]
    if item.frames:
        pooled = [x.unflatten(0, (-1, item.frames)).mean(dim=1) for x in pooled]
    return pooled


def _run_model(recorder: LayerRecorder, item: PreparedModel, batch: torch.Tensor) -> dict[str, torch.Tensor]:
    return recorder.run(batch.flatten(0, 1) if item.frames else batch)


def run_cka(cfg: CkaConfig) -> CkaResult:
    """Compute CKA between all layers of ``cfg.model_a`` and ``cfg.model_b``; write CSV and plots."""
    with torch_threads(cfg.threads):
        return _run_cka(cfg)


def _run_cka(cfg: CkaConfig) -> CkaResult:
    data = load_analysis_data(cfg.data, "any")  # the images are what counts; any kind of labels
    images = data.splits[cfg.split].images
    if images.shape[0] < MIN_BATCH:
        raise DataError(f"split '{cfg.split}' has {images.shape[0]} images; CKA needs at least {MIN_BATCH}")
    if cfg.estimator == "minibatch" and cfg.batch_size < MIN_BATCH:
        raise DataError(f"batch_size {cfg.batch_size} is too small for minibatch CKA (at least {MIN_BATCH})")
    if cfg.temporal.aggregation == "ltae":
        raise ConfigError(
            "cka compares fixed representations; temporal.aggregation=ltae has weights to train, use mean"
        )
    a, b = prepare_models(
        [cfg.model_a, cfg.model_b], data, "all", None, cfg.pooling, unique_names=False, temporal=cfg.temporal
    )
    device = resolve_device(cfg.device)
    out = Path(cfg.output_dir).expanduser()
    claim_out_dir(out, "cka", {"data.root": cfg.data.root})
    save_config(cfg, out / "config.yaml")

    accumulator = MinibatchCKAMatrix()
    collected_a: list[list[torch.Tensor]] = [[] for _ in a.layers]
    collected_b: list[list[torch.Tensor]] = [[] for _ in b.layers]
    model_a, model_b = a.backbone.model.to(device).eval(), b.backbone.model.to(device).eval()
    # Drop a last batch too small for the unbiased HSIC rather than bias the average with it.
    remainder = images.shape[0] % cfg.batch_size
    usable = images.shape[0]
    if cfg.estimator == "minibatch" and 0 < remainder < MIN_BATCH:
        usable -= remainder
    with (
        progress_bars(cfg.progress) as progress,
        LayerRecorder(model_a, a.layers) as rec_a,
        LayerRecorder(model_b, b.layers) as rec_b,
    ):
        task_id = progress.add_task(f"CKA {a.backbone.name} vs {b.backbone.name}", total=usable, status="")
        for start in range(0, usable, cfg.batch_size):
            raw = images[start : min(start + cfg.batch_size, usable)]
            batch_a = a.backbone.inputs(data.normalization)(raw).to(device)
            batch_b = b.backbone.inputs(data.normalization)(raw).to(device)
            xs, ys = _pooled(a, _run_model(rec_a, a, batch_a)), _pooled(b, _run_model(rec_b, b, batch_b))
            if cfg.estimator == "minibatch":
                accumulator.update(xs, ys)
            else:
                for store, feats in ((collected_a, xs), (collected_b, ys)):
                    for i, f in enumerate(feats):
                        store[i].append(f.flatten(1).float().cpu())
            progress.advance(task_id, raw.shape[0])
    if cfg.estimator == "minibatch":
        matrix = accumulator.compute()
    else:
        matrix = cka_matrix(
            [torch.cat(c) for c in collected_a],
            [torch.cat(c) for c in collected_b],
            debiased=cfg.estimator == "debiased",
        )
    return _write(cfg, a, b, matrix.cpu(), out, usable)


def _write(
    cfg: CkaConfig, a: PreparedModel, b: PreparedModel, matrix: torch.Tensor, out: Path, samples: int
) -> CkaResult:
    name_a, name_b = a.backbone.name, b.backbone.name
    if name_a == name_b:
        name_a, name_b = f"{name_a} (A)", f"{name_b} (B)"
    rows = [
        {"layer_a": la, "layer_b": lb, "index_a": i, "index_b": j, "cka": float(matrix[i, j])}
        for i, la in enumerate(a.layers)
        for j, lb in enumerate(b.layers)
    ]
    diagonal = diagonal_pairs(a, b, matrix)
    result = CkaResult(
        matrix,
        a.layers,
        b.layers,
        diagonal,
        out / "cka.csv",
        out / "cka_heatmap.png",
        out / "cka_diagonal.png",
    )
    write_csv(result.csv_path, rows, ("layer_a", "layer_b", "index_a", "index_b", "cka"))
    label = f"{cfg.estimator} CKA, {samples} {cfg.split} images, pooling {cfg.pooling}"
    plot_cka_heatmap(
        matrix, a.layers, b.layers, result.heatmap_path, name_a, name_b, f"{name_a} vs {name_b}\n{label}"
    )
    plot_cka_diagonal(diagonal, result.diagonal_path, f"Matching layers: {name_a} vs {name_b} ({label})")
    by_kind: dict[str, list[float]] = {}
    for pair in diagonal:
        by_kind.setdefault(pair["kind"], []).append(pair["cka"])
    lowest = sorted(diagonal, key=lambda p: p["cka"])[:5]
    result.summary = {
        "model_a": name_a,
        "model_b": name_b,
        "estimator": cfg.estimator,
        "samples": samples,
        "csv": str(result.csv_path),
        "heatmap": str(result.heatmap_path),
        "diagonal": str(result.diagonal_path),
        "mean_diagonal_by_kind": {k: sum(v) / len(v) for k, v in by_kind.items()},
        "lowest_diagonal": [{"layer": p["layer_a"], "cka": p["cka"]} for p in lowest],
    }
    write_json(out / "summary.json", result.summary)
    if cfg.progress:
        kinds = ", ".join(f"{k} {v:.3f}" for k, v in result.summary["mean_diagonal_by_kind"].items())
        console.print(f"mean CKA of matching layers by kind: {kinds}")
        console.print(
            "largest change (lowest CKA): " + ", ".join(f"{p['layer_a']} {p['cka']:.3f}" for p in lowest)
        )
    return result
