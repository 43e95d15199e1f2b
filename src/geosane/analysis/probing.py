"""``geosane probe``: layerwise probing of one or more backbones.

For every model, layer, probe method, label fraction and seed a probe is fitted on frozen features
of the train split (a seeded per-class fraction of it), its hyper-parameters chosen on ``select``,
and its metric reported on ``test``. Features are cached per (model, layer, split) and finished
probes per (model, layer), so an interrupted or repeated run resumes where it stopped.

Everything the run needs (data, models, layer paths, label fractions, input sizes) is checked
before the output directory is touched.

Temporal stacks ``[N, T, C, H, W]``: a natively temporal model takes them whole; a single-image
model runs on every frame, its per-frame features are cached as they are, and the probe reads them
averaged over T (``temporal.aggregation: mean``, every method) or through an L-TAE trained with the
``linear`` probe (``ltae``). See :mod:`geosane.analysis.temporal`.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.table import Table

from geosane.analysis.config import ProbeConfig
from geosane.analysis.data import AnalysisData, label_subset, load_analysis_data
from geosane.analysis.features import MAP, FeatureCache, progress_bars, resolve_device, torch_threads
from geosane.analysis.layers import (
    LayerRecorder,
    num_prefix_tokens,
    output_map,
    pool_output,
    resolve_layers,
    time_tokens,
)
from geosane.analysis.models import Backbone, ModelSpec, attach_normalization, input_check, load_backbone
from geosane.analysis.plots import plot_depth_profile
from geosane.analysis.probes import fit_ltae_probe, fit_probe, metric_name, score_readout, single_thread
from geosane.analysis.temporal import TemporalSettings, check_temporal_settings, frames_per_model
from geosane.config import save_config, to_dict
from geosane.console import console
from geosane.errors import ConfigError
from geosane.io import claim_out_dir, read_json, write_json, write_text

__all__ = ["PreparedModel", "ProbeResult", "prepare_models", "run_probe", "write_csv"]

ROW_FIELDS = (
    "model",
    "layer",
    "depth",
    "relative_depth",
    "num_layers",
    "method",
    "fraction",
    "seed",
    "n_train",
    "metric",
    "select",
    "test",
    "choice",
)


@dataclass
class PreparedModel:
    """A built backbone, its checked layer paths and how its layer outputs are reduced."""

    backbone: Backbone
    layers: list[str]
    representation: str
    frames: int | None = None  # temporal stacks run frame by frame (a single-image model), else None


@dataclass
class ProbeResult:
    """Rows of the CSV, the files written, and what was computed versus read from the caches."""

    rows: list[dict[str, Any]]
    csv_path: Path
    plot_path: Path
    features_computed: int = 0
    features_loaded: int = 0
    probes_fitted: int = 0
    probes_cached: int = 0
    summary: dict[str, Any] = field(default_factory=dict)


def write_csv(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str]) -> Path:
    """Atomically write ``rows`` as CSV with the columns ``fields``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    return write_text(path, buffer.getvalue())


def prepare_models(
    specs: Sequence[ModelSpec],
    data: AnalysisData,
    default_layers: str,
    representation: str | None,
    default_pooling: str,
    unique_names: bool = True,
    temporal: TemporalSettings | None = None,
) -> list[PreparedModel]:
    """Build every model, resolve its layers and push two images through the hooks (no output yet).

    ``representation`` forces ``map`` (segmentation); otherwise each model's ``pooling`` (or
    ``default_pooling``) is used. ``temporal``: how temporal stacks meet each model
    (:func:`geosane.analysis.temporal.frames_per_model`, whose errors come before any output).
    """
    prepared: list[PreparedModel] = []
    temporal = temporal or TemporalSettings()
    raw_sample = data.splits["train"].images[:2]
    for spec in specs:
        backbone = load_backbone(spec)
        attach_normalization(backbone, data.normalization_choice, data.splits["train"].images)
        sample = backbone.inputs(data.normalization)(raw_sample)
        frames = frames_per_model(backbone.name, backbone.model, sample, temporal)
        input_check(backbone, sample)
        layers = resolve_layers(backbone.model, spec.layers, default_layers, what=f"model '{backbone.name}'")
        rep = representation or spec.pooling or default_pooling
        if rep not in ("cls", "mean", "gap", "flatten", MAP):
            raise ConfigError(
                f"unknown pooling '{rep}' for model '{backbone.name}' (cls, mean, gap, flatten)"
            )
        prefix = num_prefix_tokens(backbone.model)
        with LayerRecorder(backbone.model, layers) as recorder:
            outputs = recorder.run(sample.flatten(0, 1) if frames else sample)
        for layer in layers:
            if rep == MAP:
                output_map(outputs[layer], prefix, layer, time_tokens(backbone.model))
            else:
                pool_output(outputs[layer], rep, prefix, layer)  # type: ignore[arg-type]
        prepared.append(PreparedModel(backbone, layers, rep, frames))
    names = [p.backbone.name for p in prepared]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates and unique_names:
        raise ConfigError(f"model names must be unique, {duplicates} repeat; set 'name' for each model")
    return prepared


def _fraction_subsets(cfg: ProbeConfig, data: AnalysisData) -> dict[tuple[float, int], np.ndarray]:
    """The labelled train subset of every (fraction, seed), checked before anything is written."""
    train = data.splits["train"]
    return {
        (fraction, seed): label_subset(train, cfg.task, fraction, seed, data.class_names)
        for fraction in cfg.probe.fractions
        for seed in cfg.probe.seeds
    }


def _probe_key(cfg: ProbeConfig, data: AnalysisData, representation: str) -> str:
    settings = {
        "task": cfg.task,
        "targets": data.targets_key,
        "probe": to_dict(cfg.probe),
        "rep": representation,
    }
    if data.time_steps is not None:  # per-frame features are cached alike; the probe depends on this
        settings["temporal"] = to_dict(cfg.temporal)
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _validate(cfg: ProbeConfig) -> None:
    if cfg.task == "regression" and "logistic" in cfg.probe.methods:
        raise ConfigError("probe.methods: 'logistic' is for classification/segmentation; use ridge or linear")
    bad = [f for f in cfg.probe.fractions if not 0 < f <= 1]
    if bad:
        raise ConfigError(f"probe.fractions must be in (0, 1], got {bad}")
    closed_form = [m for m in cfg.probe.methods if m != "linear"]
    if cfg.temporal.aggregation == "ltae" and closed_form:
        raise ConfigError(
            f"temporal.aggregation=ltae trains its attention with the probe, by gradient: use probe.methods: "
            f"[linear] (got {cfg.probe.methods}; {', '.join(closed_form)} are closed form), or "
            "temporal.aggregation=mean"
        )


def run_probe(cfg: ProbeConfig) -> ProbeResult:
    """Run the layerwise probes of ``cfg``; writes ``probe.csv``, ``depth_profile.png`` and
    ``summary.json`` to ``cfg.output_dir``."""
    with torch_threads(cfg.threads):
        return _run_probe(cfg)


def _run_probe(cfg: ProbeConfig) -> ProbeResult:
    _validate(cfg)
    data = load_analysis_data(cfg.data, cfg.task)
    check_temporal_settings(cfg.temporal, data.splits["train"].images)
    subsets = _fraction_subsets(cfg, data)
    representation = MAP if cfg.task == "segmentation" else None
    prepared = prepare_models(cfg.models, data, "blocks", representation, "mean", temporal=cfg.temporal)
    device = resolve_device(cfg.device)

    out = Path(cfg.output_dir).expanduser()
    claim_out_dir(out, "probe", {"data.root": cfg.data.root})
    save_config(cfg, out / "config.yaml")
    cache = FeatureCache(cfg.feature_cache)
    rows: list[dict[str, Any]] = []
    fitted = cached = 0
    jobs = len(cfg.probe.methods) * len(subsets)
    total = sum(len(p.layers) for p in prepared) * jobs
    with progress_bars(cfg.progress) as progress:
        overall = progress.add_task("probes", total=total, status="")
        for item in prepared:
            backbone, layers = item.backbone, item.layers
            features = {
                split: cache.features(
                    backbone, data, split, layers, item.representation, cfg.batch_size, device, progress
                )
                for split in ("train", "select", "test")
            }
            ltae = bool(item.frames) and cfg.temporal.aggregation == "ltae"
            if item.frames and not ltae:  # per-frame features [N, T, ...] -> their mean over T
                features = {s: {la: f.mean(dim=1) for la, f in fs.items()} for s, fs in features.items()}
            key = _probe_key(cfg, data, item.representation)
            for depth, layer in enumerate(layers, start=1):
                progress.update(overall, status=f"{backbone.name} {layer}")
                record = cache.root / backbone.key / data.key / "probes" / key / f"{layer}.json"
                layer_rows = read_json(record) if record.is_file() else None
                if layer_rows is None:
                    layer_rows = _probe_layer(cfg, data, features, layer, subsets, ltae)
                    write_json(record, layer_rows)
                    fitted += jobs
                else:
                    cached += jobs
                for row in layer_rows:
                    rows.append(
                        {
                            "model": backbone.name,
                            "layer": layer,
                            "depth": depth,
                            "relative_depth": depth / len(layers),
                            "num_layers": len(layers),
                            **row,
                        }
                    )
                progress.advance(overall, jobs)
    result = ProbeResult(
        rows, out / "probe.csv", out / "depth_profile.png", cache.computed, cache.loaded, fitted, cached
    )
    write_csv(result.csv_path, rows, ROW_FIELDS)
    plot_depth_profile(rows, result.plot_path)
    result.summary = _summary(rows, result)
    write_json(out / "summary.json", result.summary)
    if cfg.progress:
        _print_best(result.summary)
    return result


def _probe_layer(
    cfg: ProbeConfig,
    data: AnalysisData,
    features: dict[str, dict[str, torch.Tensor]],
    layer: str,
    subsets: dict[tuple[float, int], np.ndarray],
    ltae: bool = False,
) -> list[dict[str, Any]]:
    train_x, select_x, test_x = (features[s][layer] for s in ("train", "select", "test"))
    train_y, select_y, test_y = (data.splits[s].targets for s in ("train", "select", "test"))
    rows = []
    for method in cfg.probe.methods:
        for (fraction, seed), idx in subsets.items():
            pick = torch.as_tensor(idx, dtype=torch.long)
            if ltae:  # per-frame features: an L-TAE trained with the linear probe (method 'linear')
                fit = fit_ltae_probe(
                    cfg.task,
                    (train_x[pick], train_y[pick]),
                    (select_x, select_y),
                    data.num_classes,
                    cfg.temporal,
                    seed,
                    cfg.probe.linear,
                )
            else:
                fit = fit_probe(
                    method,
                    cfg.task,
                    (train_x[pick], train_y[pick]),
                    (select_x, select_y),
                    data.num_classes,
                    seed,
                    cfg.probe.linear,
                    cfg.probe.ridge_alphas,
                    cfg.probe.logistic_cs,
                    cfg.probe.pixels_per_image,
                )
            with single_thread():
                test = score_readout(fit.readout, cfg.task, test_x, test_y, data.num_classes)
            rows.append(
                {
                    "method": method,
                    "fraction": fraction,
                    "seed": seed,
                    "n_train": int(idx.size),
                    "metric": metric_name(cfg.task),
                    "select": fit.select_score,
                    "test": test,
                    "choice": fit.choice,
                }
            )
    return rows


def _summary(rows: list[dict[str, Any]], result: ProbeResult) -> dict[str, Any]:
    """Best layer (by mean test metric over seeds) per model, method and fraction, and last-layer value."""
    groups: dict[tuple[str, str, float], dict[str, list[float]]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["method"], r["fraction"]), {}).setdefault(r["layer"], []).append(
            r["test"]
        )
    best = []
    for (model, method, fraction), layers in groups.items():
        means = {layer: float(np.mean(v)) for layer, v in layers.items()}
        top = max(means, key=lambda k: means[k])
        last = list(layers)[-1]
        best.append(
            {
                "model": model,
                "method": method,
                "fraction": fraction,
                "best_layer": top,
                "best_test": means[top],
                "last_layer": last,
                "last_test": means[last],
            }
        )
    return {
        "csv": str(result.csv_path),
        "plot": str(result.plot_path),
        "best": best,
        "features_computed": result.features_computed,
        "features_loaded": result.features_loaded,
        "probes_fitted": result.probes_fitted,
        "probes_cached": result.probes_cached,
    }


def _print_best(summary: dict[str, Any]) -> None:
    table = Table(title="best layer per model (mean test metric over seeds)")
    for column in ("model", "method", "labels", "best layer", "best", "last layer", "last"):
        table.add_column(column)
    for b in summary["best"]:
        table.add_row(
            b["model"],
            b["method"],
            f"{b['fraction'] * 100:g}%",
            b["best_layer"],
            f"{b['best_test']:.3f}",
            b["last_layer"],
            f"{b['last_test']:.3f}",
        )
    console.print(table)
    console.print(
        f"features: {summary['features_computed']} computed, {summary['features_loaded']} from cache; "
        f"probes: {summary['probes_fitted']} fitted, {summary['probes_cached']} from cache"
    )
