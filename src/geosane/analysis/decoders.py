"""``geosane probe --mode decoders``: how much the decoder and fine-tuning matter for segmentation.

Every model is trained with each decoder head (linear, UPerNet, U-Net; :mod:`geosane.tasks`) on a
frozen and on a fine-tuned backbone, all under one budget (``decoders.fit``: epochs, optimizer,
learning rate, batch size, seed), selected nothing on test, and scored by mIoU on ``test``. Each
finished run is saved at once, so an interrupted comparison resumes with the runs still missing.
Outputs: ``decoders.csv``, ``decoders.md`` and ``decoders.png``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from geosane.analysis.config import ProbeConfig
from geosane.analysis.data import AnalysisData, load_analysis_data
from geosane.analysis.features import progress_bars, torch_threads
from geosane.analysis.models import Backbone, input_check, load_backbone
from geosane.analysis.plots import plot_decoder_bars
from geosane.analysis.probing import write_csv
from geosane.config import save_config
from geosane.console import console
from geosane.data import TensorImageDataset
from geosane.errors import ConfigError, GeosaneError
from geosane.io import claim_out_dir, read_json, write_json, write_text
from geosane.tasks import build_segmenter, evaluate, fit

__all__ = ["DecoderResult", "decoder_table", "run_decoders"]

FIELDS = ("model", "decoder", "adaptation", "seed", "metric", "select", "test", "trainable_params", "seconds")


@dataclass
class DecoderResult:
    """One row per (model, decoder, adaptation, seed) and the files written."""

    rows: list[dict[str, Any]]
    csv_path: Path
    table_path: Path
    plot_path: Path
    trained: int = 0
    resumed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def _segmenter(cfg: ProbeConfig, backbone: Backbone, decoder: str, num_classes: int) -> nn.Module:
    out_indices = tuple(cfg.decoders.out_indices) if cfg.decoders.out_indices else 4
    try:
        return build_segmenter(
            backbone.loaded,
            num_classes,
            decoder,
            in_chans=backbone.spec.in_chans,
            out_indices=out_indices,
            decoder_channels=cfg.decoders.channels,
        )
    except (IndexError, AssertionError, ValueError) as exc:
        raise GeosaneError(
            f"model '{backbone.name}' cannot feed decoder '{decoder}' with out_indices {out_indices}: {exc}"
        ) from None


def _prepare(cfg: ProbeConfig, data: AnalysisData) -> list[Backbone]:
    """Build every model and every segmenter once, on two images, before anything is written."""
    sample = data.normalization(data.splits["train"].images[:2])
    backbones = []
    for spec in cfg.models:
        backbone = load_backbone(spec)
        input_check(backbone, sample)
        for decoder in cfg.decoders.names:
            with torch.no_grad():
                _segmenter(cfg, backbone, decoder, data.num_classes).eval()(sample)
        backbones.append(backbone)
    names = [b.name for b in backbones]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique, got {names}; set 'name' for each model")
    return backbones


def run_decoders(cfg: ProbeConfig) -> DecoderResult:
    """Train and score every (model, decoder, adaptation, seed) of ``cfg`` (task ``segmentation``)."""
    with torch_threads(cfg.threads):
        return _run_decoders(cfg)


def _run_decoders(cfg: ProbeConfig) -> DecoderResult:
    if cfg.task != "segmentation":
        raise ConfigError(
            "run_decoders compares segmentation heads: set task: segmentation (csmask data)",
            flags={"run_decoders": "--mode decoders"},
        )
    data = load_analysis_data(cfg.data, "segmentation")
    backbones = _prepare(cfg, data)
    out = Path(cfg.output_dir).expanduser()
    claim_out_dir(out, "probe", {"data.root": cfg.data.root})
    save_config(cfg, out / "config.yaml")
    train, select, test = (data.splits[s] for s in ("train", "select", "test"))
    train_set = TensorImageDataset(
        train.images, train.targets, data.normalization, augment=cfg.decoders.augment
    )
    select_set = TensorImageDataset(select.images, select.targets, data.normalization)
    test_set = TensorImageDataset(test.images, test.targets, data.normalization)
    runs = [
        (b, d, a, s)
        for b in backbones
        for d in cfg.decoders.names
        for a in cfg.decoders.adaptations
        for s in cfg.decoders.seeds
    ]
    result = DecoderResult([], out / "decoders.csv", out / "decoders.md", out / "decoders.png")
    with progress_bars(cfg.progress) as progress:
        task = progress.add_task("decoder runs", total=len(runs), status="")
        for backbone, decoder, adaptation, seed in runs:
            progress.update(task, status=f"{backbone.name} {decoder} {adaptation} seed {seed}")
            record = (
                out / "runs" / f"{backbone.key}-{data.targets_key}" / f"{decoder}-{adaptation}-{seed}.json"
            )
            if record.is_file():
                row = read_json(record)
                result.resumed += 1
            else:
                row = _train_one(
                    cfg, backbone, decoder, adaptation, seed, data, train_set, select_set, test_set
                )
                write_json(record, row)
                result.trained += 1
            result.rows.append({"model": backbone.name, **row})
            progress.advance(task)
    write_csv(result.csv_path, result.rows, FIELDS)
    write_text(result.table_path, decoder_table(result.rows))
    plot_decoder_bars(result.rows, result.plot_path)
    if cfg.progress:
        console.print(decoder_table(result.rows), highlight=False, soft_wrap=True)
    return result


def _train_one(
    cfg: ProbeConfig,
    backbone: Backbone,
    decoder: str,
    adaptation: str,
    seed: int,
    data: AnalysisData,
    train_set: TensorImageDataset,
    select_set: TensorImageDataset,
    test_set: TensorImageDataset,
) -> dict[str, Any]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # decoder initialisation
        model = _segmenter(cfg, backbone, decoder, data.num_classes)
    fit_config = dataclasses.replace(
        cfg.decoders.fit, freeze_backbone=adaptation == "frozen", seed=seed, progress=False
    )
    started = time.perf_counter()
    result = fit(model, "segmentation", data.num_classes, train_set, select_set, fit_config)
    seconds = time.perf_counter() - started
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    test = evaluate(model, "segmentation", data.num_classes, test_set)["miou"]
    return {
        "decoder": decoder,
        "adaptation": adaptation,
        "seed": seed,
        "metric": "miou",
        "select": result.final.get("miou", float("nan")),
        "test": test,
        "trainable_params": trainable,
        "seconds": round(seconds, 2),
    }


def decoder_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table: test mIoU (mean ± std over seeds) per model and decoder, frozen vs fine-tuned."""
    adaptations = list(dict.fromkeys(r["adaptation"] for r in rows))
    header = "| model | decoder | " + " | ".join(f"{a} (test mIoU)" for a in adaptations) + " |"
    if {"frozen", "finetuned"} <= set(adaptations):
        header += " fine-tuning gain |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for model in dict.fromkeys(r["model"] for r in rows):
        for decoder in dict.fromkeys(r["decoder"] for r in rows if r["model"] == model):
            means: dict[str, float] = {}
            cells = []
            for adaptation in adaptations:
                vals = [
                    float(r["test"])
                    for r in rows
                    if r["model"] == model and r["decoder"] == decoder and r["adaptation"] == adaptation
                ]
                means[adaptation] = float(np.mean(vals)) if vals else float("nan")
                cells.append(f"{means[adaptation]:.3f} ± {np.std(vals):.3f}" if vals else "-")
            line = f"| {model} | {decoder} | " + " | ".join(cells) + " |"
            if {"frozen", "finetuned"} <= set(adaptations):
                line += f" {means['finetuned'] - means['frozen']:+.3f} |"
            lines.append(line)
    return "\n".join(lines) + "\n"
