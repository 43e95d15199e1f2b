"""``geosane probe --mode decoders``: how much the decoder, fine-tuning and the label budget matter.

Every model is trained with each decoder head (linear, UPerNet, U-Net; :mod:`geosane.tasks`) on a
frozen and on a fine-tuned backbone, on each label fraction of the train split and with each seed,
all under one budget (``decoders.fit``), selecting nothing on test and scored on ``test``.

What the heads predict is ``decoders.target``:

- ``mask``: a class per pixel (csmask clear / cloud / shadow); mIoU, per-class IoU and F1.
- ``fraction:<class>``: one value per chip, that class's share of the chip's labelled pixels
  (``fraction:cloud`` is the cloud cover), from the same masks; R², RMSE, MAE.
- ``band:<name|index>``: a value per pixel, a spectral band held out of ``data.bands`` (e.g. the
  SWIR1 reflectance from RGB); R², RMSE, MAE over pixels.
- ``value``: one value per image from ``data.targets`` (an image folder with a CSV).

Label fractions are drawn with :func:`geosane.data.cap_samples` (the task layer's capping rule)
under ``decoders.label_seed``: one subset per fraction, the same for every model, decoder,
adaptation and seed, and nested (a smaller fraction is a part of a larger one). Each finished run is
saved at once under ``runs/<settings key>/``; a rerun reads the finished runs back and trains the
missing ones, and runs made with other settings (budget, head width, target, data) are never
reused: they stay apart and the run says which setting changed. Outputs: ``decoders.csv``,
``decoders.md`` and ``decoders.png``.

Temporal stacks ``[N, T, C, H, W]`` (``data.time_steps``): a natively temporal backbone takes them
whole; a single-image one runs per frame and every feature level is aggregated over T before the
head, by the mean or a per-pixel L-TAE trained with the head (``temporal.aggregation``,
:func:`geosane.analysis.temporal.temporal_task_model`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader

from geosane.analysis.config import ProbeConfig
from geosane.analysis.data import AnalysisData, load_analysis_data
from geosane.analysis.features import progress_bars, torch_threads
from geosane.analysis.models import Backbone, attach_normalization, input_check, load_backbone
from geosane.analysis.plots import plot_decoder_bars
from geosane.analysis.probing import write_csv
from geosane.analysis.temporal import check_temporal_settings, frames_per_model, temporal_task_model
from geosane.config import save_config, to_dict
from geosane.console import console
from geosane.data import IGNORE_INDEX, Normalization, TaskPart, TensorImageDataset, cap_samples
from geosane.data.csmask import CSMASK_BANDS
from geosane.errors import ConfigError, DataError, GeosaneError
from geosane.io import claim_out_dir, read_json, write_json, write_text
from geosane.tasks import build_segmenter, fit, make_metric
from geosane.tasks.regression import (
    RegressionModel,
    build_regressor,
    evaluate_regression,
    fit_regression,
    target_statistics,
)

__all__ = [
    "DecoderData",
    "DecoderResult",
    "DecoderTarget",
    "decoder_table",
    "label_fraction_subsets",
    "load_decoder_data",
    "parse_target",
    "run_decoders",
    "segmentation_scores",
]

FORMAT = 2  # version of the run records (runs/<settings key>/...); older records are not read
TargetKind = Literal["mask", "value", "fraction", "band"]
METRIC_LABEL = {"miou": "mIoU", "r2": "R²"}


@dataclass(frozen=True)
class DecoderTarget:
    """What the heads predict (``decoders.target``), parsed."""

    kind: TargetKind
    spec: str
    name: str = ""  # the class of ``fraction``, the band of ``band``
    band: int = -1  # ``band``: index into the scene's bands

    @property
    def per_image(self) -> bool:
        return self.kind in ("value", "fraction")

    @property
    def regression(self) -> bool:
        return self.kind != "mask"

    @property
    def metric(self) -> str:
        return "r2" if self.regression else "miou"


def parse_target(cfg: ProbeConfig) -> DecoderTarget:
    """``decoders.target`` (or the task's default), checked against the data kind before loading."""
    spec = cfg.decoders.target
    if spec is None:
        if cfg.task == "classification":
            raise ConfigError(
                "run_decoders trains dense heads: set task: segmentation (csmask data), task: regression "
                "(data.targets) or decoders.target (mask, value, fraction:<class>, band:<name>)",
                flags={"run_decoders": "--mode decoders"},
            )
        spec = "mask" if cfg.task == "segmentation" else "value"
    kind, _, arg = spec.partition(":")
    csmask = cfg.data.kind == "csmask"
    dense = csmask or cfg.data.kind == "torchgeo"  # masks: csmask chips or a TorchGeo segmentation set
    if kind in ("mask", "value") and arg:
        raise ConfigError(f"decoders.target: '{spec}' takes no ':' argument (use '{kind}')")
    if kind == "mask":
        if not dense:
            raise ConfigError(
                "decoders.target: mask needs per-pixel classes: set data.kind: csmask or a TorchGeo "
                "segmentation dataset (data.kind: torchgeo)"
            )
        return DecoderTarget("mask", spec)
    if kind == "value":
        if dense or cfg.data.targets is None:
            raise ConfigError(
                "decoders.target: value (regression per image) needs an image folder with data.targets "
                "(a CSV with columns file,target); this data has no regression target"
            )
        return DecoderTarget("value", spec)
    if kind in ("fraction", "band"):
        if not (dense if kind == "fraction" else csmask):
            raise ConfigError(
                f"decoders.target: {spec} is derived from "
                f"{'masks (csmask or TorchGeo segmentation data)' if kind == 'fraction' else 'csmask scenes'}; "
                "set data.kind: csmask, or use decoders.target: value with data.targets"
            )
        if not arg:
            example = "a class, e.g. fraction:cloud" if kind == "fraction" else "a band, e.g. band:swir1"
            raise ConfigError(f"decoders.target: '{kind}' needs {example}")
        if kind == "fraction":
            return DecoderTarget("fraction", spec, arg)
        band = int(arg) if arg.isdigit() else (CSMASK_BANDS.index(arg) if arg in CSMASK_BANDS else -1)
        if not 0 <= band < len(CSMASK_BANDS):
            raise ConfigError(
                f"decoders.target: unknown band '{arg}'; csmask bands: {', '.join(CSMASK_BANDS)} (or 0-5)"
            )
        inputs = list(range(len(CSMASK_BANDS))) if cfg.data.bands is None else list(cfg.data.bands)
        if band in inputs:
            raise ConfigError(
                f"decoders.target: band {CSMASK_BANDS[band]} ({band}) is one of the input bands data.bands "
                f"{inputs}; hold it out of data.bands to predict it"
            )
        return DecoderTarget("band", spec, CSMASK_BANDS[band], band)
    raise ConfigError(
        f"decoders.target: unknown target '{spec}'; use mask, value, fraction:<class> or band:<name|index>"
    )


@dataclass
class DecoderData:
    """The three splits with the target the heads learn, and what the run keys depend on."""

    target: DecoderTarget
    parts: dict[str, TaskPart]
    normalization: Normalization
    class_names: tuple[str, ...]  # mask: the classes; otherwise ()
    key: str
    dropped: dict[str, int] = field(default_factory=dict)  # fraction: chips without labelled pixels
    normalization_choice: str = "auto"  # data.normalization as asked (analysis.models.attach_normalization)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def _class_fraction(part: TaskPart, cls: int) -> tuple[TaskPart, int]:
    """Each chip's share of pixels of class ``cls`` among its labelled ones (chips without any left out)."""
    masks = part.targets
    labelled = (masks != IGNORE_INDEX).flatten(1).sum(dim=1)
    hits = (masks == cls).flatten(1).sum(dim=1)
    keep = labelled > 0
    values = hits[keep].double() / labelled[keep].double()
    return TaskPart(part.images[keep], values.float()), int((~keep).sum())


def load_decoder_data(cfg: ProbeConfig, target: DecoderTarget) -> DecoderData:
    """Load the data of ``cfg`` with the target of ``target`` (errors name the parameter)."""
    data: AnalysisData = load_analysis_data(
        cfg.data, "regression" if target.kind == "value" else "segmentation"
    )
    parts = dict(data.splits)
    dropped: dict[str, int] = {}
    if target.kind == "fraction":
        if target.name not in data.class_names:
            raise ConfigError(
                f"decoders.target: no class '{target.name}' in the masks; classes: {', '.join(data.class_names)}"
            )
        cls = data.class_names.index(target.name)
        for name in list(parts):
            parts[name], dropped[name] = _class_fraction(parts[name], cls)
            if len(parts[name]) == 0:
                raise DataError(f"decoders.target: {target.spec}: no {name} chip has a labelled pixel")
    elif target.kind == "band":
        # the same splits (they do not depend on the bands), read once more for the held-out band
        band_spec = dataclasses.replace(cfg.data, bands=[target.band], normalization="dataset")
        band_data = load_analysis_data(band_spec, "segmentation")
        parts = {
            name: TaskPart(part.images, band_data.splits[name].images[:, 0].float())
            for name, part in parts.items()
        }
    digest = hashlib.sha256(f"{data.targets_key}/{target.spec}".encode())
    for name in ("train", "select", "test"):
        digest.update(parts[name].targets.contiguous().numpy().tobytes())
    classes = data.class_names if target.kind == "mask" else ()
    return DecoderData(
        target, parts, data.normalization, classes, digest.hexdigest()[:16], dropped, data.normalization_choice
    )


def label_fraction_subsets(cfg: ProbeConfig, data: DecoderData) -> dict[float, np.ndarray]:
    """The train-split indices of every ``decoders.label_fractions`` entry, checked before any output.

    ``round(fraction * n)`` samples kept by :func:`geosane.data.cap_samples` (seed
    ``decoders.label_seed``); the subsets are nested since every size is a prefix of one permutation.
    A subset with fewer than 2 samples, or (``mask``) without a pixel of some class, is refused with
    the smallest fraction that works.
    """
    train = data.parts["train"]
    n = len(train)
    seed = cfg.decoders.label_seed
    present = None
    if data.target.kind == "mask":
        masks = train.targets
        present = torch.stack(
            [(masks == c).flatten(1).any(dim=1) for c in range(data.num_classes)], dim=1
        ).numpy()  # [n, classes]
    subsets: dict[float, np.ndarray] = {}
    for fraction in cfg.decoders.label_fractions:
        take = math.floor(fraction * n + 0.5)
        what = "chips" if data.target.kind != "value" else "images"
        if take < 2:
            smallest = 1.5 / n if n >= 2 else float("inf")
            raise ConfigError(
                f"decoders.label_fractions: {fraction:g} keeps {take} of {n} training {what}; at least 2 are "
                f"needed, use a fraction >= {smallest:.3g}"
            )
        chosen = cap_samples(np.arange(n), take, seed)
        if present is not None:
            empty = [c for c in range(data.num_classes) if not present[chosen, c].any()]
            if empty:
                name = data.class_names[empty[0]]
                holders = np.flatnonzero(present[:, empty[0]])
                if holders.size == 0:
                    raise ConfigError(
                        f"decoders.label_fractions: the train split has no '{name}' pixel at all, so no fraction "
                        f"can train class '{name}'"
                    )
                need = _smallest_fraction(n, seed, holders)
                raise ConfigError(
                    f"decoders.label_fractions: {fraction:g} ({take} of {n} training chips, label_seed {seed}) "
                    f"leaves class '{name}' with 0 labelled pixels; use a fraction >= {need:.3g}"
                )
        subsets[fraction] = chosen
    return subsets


def _smallest_fraction(n: int, seed: int, holders: np.ndarray) -> float:
    """The smallest fraction whose subset holds one of ``holders`` (subsets are nested prefixes)."""
    for take in range(2, n + 1):
        if np.isin(cap_samples(np.arange(n), take, seed), holders).any():
            return (take - 0.5) / n
    return 1.0


@dataclass
class DecoderResult:
    """One row per (model, decoder, adaptation, label fraction, seed) and the files written."""

    rows: list[dict[str, Any]]
    csv_path: Path
    table_path: Path
    plot_path: Path
    trained: int = 0
    resumed: int = 0
    settings_changed: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


def _out_indices(cfg: ProbeConfig) -> int | tuple[int, ...]:
    return tuple(cfg.decoders.out_indices) if cfg.decoders.out_indices else 4


def _head(
    cfg: ProbeConfig,
    backbone: Backbone,
    decoder: str,
    data: DecoderData,
    shift: float = 0.0,
    scale: float = 1.0,
) -> nn.Module:
    """The task model: a segmenter for ``mask``, a regressor (one output) otherwise; for temporal
    stacks and a single-image backbone, run per frame and aggregated over time."""
    frames = frames_per_model(backbone.name, backbone.model, data.parts["train"].images[:1], cfg.temporal)
    model = _plain_head(cfg, backbone, decoder, data, shift, scale)
    return temporal_task_model(model, frames, cfg.temporal, backbone.name) if frames else model


def _plain_head(
    cfg: ProbeConfig,
    backbone: Backbone,
    decoder: str,
    data: DecoderData,
    shift: float,
    scale: float,
) -> nn.Module:
    out_indices = _out_indices(cfg)
    try:
        if data.target.regression:
            return build_regressor(
                backbone.loaded,
                decoder,
                per_image=data.target.per_image,
                shift=shift,
                scale=scale,
                in_chans=backbone.spec.in_chans,
                out_indices=out_indices,
                decoder_channels=cfg.decoders.channels,
            )
        return build_segmenter(
            backbone.loaded,
            data.num_classes,
            decoder,
            in_chans=backbone.spec.in_chans,
            out_indices=out_indices,
            decoder_channels=cfg.decoders.channels,
        )
    except (IndexError, AssertionError, ValueError) as exc:
        raise GeosaneError(
            f"model '{backbone.name}' cannot feed decoder '{decoder}' with out_indices {out_indices}: {exc}"
        ) from None


def _prepare(cfg: ProbeConfig, data: DecoderData) -> list[Backbone]:
    """Build every model and every head once, on two images, before anything is written."""
    backbones = []
    for spec in cfg.models:
        backbone = load_backbone(spec)
        attach_normalization(backbone, data.normalization_choice, data.parts["train"].images)
        sample = backbone.inputs(data.normalization)(data.parts["train"].images[:2])
        frames_per_model(backbone.name, backbone.model, sample, cfg.temporal)  # temporal mismatches first
        input_check(backbone, sample)
        for decoder in cfg.decoders.names:
            with torch.no_grad():
                _head(cfg, backbone, decoder, data).eval()(sample)
        backbones.append(backbone)
    names = [b.name for b in backbones]
    if len(set(names)) != len(names):
        raise ConfigError(f"model names must be unique, got {names}; set 'name' for each model")
    return backbones


def _settings(cfg: ProbeConfig, data: DecoderData) -> dict[str, Any]:
    """Everything a finished run depends on besides its model, decoder, adaptation, fraction and seed."""
    fit_settings = {
        k: v for k, v in to_dict(cfg.decoders.fit).items() if k not in ("seed", "progress", "num_workers")
    }
    return {
        "format": FORMAT,
        "data": data.key,
        "target": data.target.spec,
        "fit": fit_settings,
        "channels": cfg.decoders.channels,
        "out_indices": cfg.decoders.out_indices,
        "augment": cfg.decoders.augment,
        "label_seed": cfg.decoders.label_seed,
        **({"temporal": to_dict(cfg.temporal)} if data.parts["train"].images.ndim == 5 else {}),
    }


def _settings_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _changed_settings(runs: Path, key: str, settings: dict[str, Any]) -> list[str]:
    """How ``settings`` differ from those of the latest earlier runs in ``runs`` (none: [])."""
    earlier = [p for p in runs.glob("*/settings.json") if p.parent.name != key]
    if not earlier or (runs / key / "settings.json").is_file():
        return []
    latest = max(earlier, key=lambda p: p.stat().st_mtime)
    try:
        before = _flat(read_json(latest))
    except (OSError, ValueError):
        return ["settings (the earlier record is unreadable)"]
    now = _flat(settings)
    labels = {"data": "data (images, splits or targets)", "format": "run record format"}
    return [
        f"{labels.get(name, f'decoders.{name}')}: {before.get(name)} -> {now.get(name)}"
        for name in sorted(set(before) | set(now))
        if before.get(name) != now.get(name)
    ]


def run_decoders(cfg: ProbeConfig) -> DecoderResult:
    """Train and score every (model, decoder, adaptation, label fraction, seed) of ``cfg``."""
    with torch_threads(cfg.threads):
        return _run_decoders(cfg)


def _run_decoders(cfg: ProbeConfig) -> DecoderResult:
    try:  # DecoderSettings' checks again, for a config changed in Python after loading
        dataclasses.replace(cfg.decoders)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    target = parse_target(cfg)
    data = load_decoder_data(cfg, target)
    check_temporal_settings(cfg.temporal, data.parts["train"].images)
    subsets = label_fraction_subsets(cfg, data)
    backbones = _prepare(cfg, data)
    settings = _settings(cfg, data)
    key = _settings_key(settings)

    out = Path(cfg.output_dir).expanduser()
    claim_out_dir(out, "probe", {"data.root": cfg.data.root})
    runs_dir = out / "runs"
    changed = _changed_settings(runs_dir, key, settings)
    if changed:
        console.print(
            f"decoder settings changed since the earlier runs in {runs_dir} ({'; '.join(changed)}): "
            f"those runs are kept apart and not reused; training the runs of these settings",
            highlight=False,
            soft_wrap=True,
        )
    save_config(cfg, out / "config.yaml")
    write_json(runs_dir / key / "settings.json", settings)
    parts = data.parts
    grid = [
        (b, f, d, a, s)
        for b in backbones
        for f in cfg.decoders.label_fractions
        for d in cfg.decoders.names
        for a in cfg.decoders.adaptations
        for s in cfg.decoders.seeds
    ]
    result = DecoderResult([], out / "decoders.csv", out / "decoders.md", out / "decoders.png")
    result.settings_changed = changed
    with progress_bars(cfg.progress) as progress:
        task = progress.add_task("decoder runs", total=len(grid), status="")
        for backbone, fraction, decoder, adaptation, seed in grid:
            progress.update(
                task, status=f"{backbone.name} {decoder} {adaptation} {fraction:g} labels seed {seed}"
            )
            record = runs_dir / key / backbone.key / f"{decoder}-{adaptation}-f{fraction:g}-s{seed}.json"
            row = _read_record(record)
            if row is not None:
                result.resumed += 1
            else:
                train = parts["train"].subset(subsets[fraction])
                norm = backbone.inputs(data.normalization)
                select_set = TensorImageDataset(parts["select"].images, parts["select"].targets, norm)
                test_set = TensorImageDataset(parts["test"].images, parts["test"].targets, norm)
                train_set = TensorImageDataset(train.images, train.targets, norm, augment=cfg.decoders.augment)
                row = _train_one(
                    cfg, backbone, decoder, adaptation, seed, data, train_set, select_set, test_set
                )
                row = {"fraction": fraction, "n_train": len(train), **row}
                write_json(record, row)  # at once: an interrupted comparison keeps every finished run
                result.trained += 1
            result.rows.append({"model": backbone.name, "target": target.spec, **row})
            progress.advance(task)
    write_csv(result.csv_path, result.rows, _fields(result.rows))
    write_text(result.table_path, decoder_table(result.rows))
    plot_decoder_bars(result.rows, result.plot_path)
    if cfg.progress:
        console.print(decoder_table(result.rows), highlight=False, soft_wrap=True)
    return result


def _read_record(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        row = read_json(path)
    except (OSError, ValueError):
        return None  # a damaged record is retrained (records are written atomically, so rare)
    return row if isinstance(row, dict) and "test" in row else None


def _train_one(
    cfg: ProbeConfig,
    backbone: Backbone,
    decoder: str,
    adaptation: str,
    seed: int,
    data: DecoderData,
    train_set: TensorImageDataset,
    select_set: TensorImageDataset,
    test_set: TensorImageDataset,
) -> dict[str, Any]:
    target = data.target
    stats = target_statistics(train_set.targets) if target.regression else {"shift": 0.0, "scale": 1.0}
    if target.regression and not stats["scale"] > 0:
        raise DataError(
            f"decoders.target: {target.spec} is constant on the training subset; nothing to regress"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # decoder initialisation
        model = _head(cfg, backbone, decoder, data, float(stats["shift"]), float(stats["scale"]))
    fit_config = dataclasses.replace(
        cfg.decoders.fit, freeze_backbone=adaptation == "frozen", seed=seed, progress=False
    )
    started = time.perf_counter()
    scores: dict[str, Any]
    if target.regression:
        assert isinstance(model, RegressionModel)  # _head builds one for every regression target
        fitted = fit_regression(model, train_set, select_set, fit_config)
        seconds = time.perf_counter() - started
        scores = evaluate_regression(model, test_set)
    else:
        fitted = fit(model, "segmentation", data.num_classes, train_set, select_set, fit_config)
        seconds = time.perf_counter() - started
        scores = segmentation_scores(model, test_set, data.class_names)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {
        "decoder": decoder,
        "adaptation": adaptation,
        "seed": seed,
        "metric": target.metric,
        "select": fitted.final.get(target.metric, float("nan")),
        "test": scores[target.metric],
        **{k: v for k, v in scores.items() if k != target.metric},
        "trainable_params": trainable,
        "seconds": round(seconds, 2),
    }


@torch.no_grad()
def segmentation_scores(
    model: nn.Module, data: TensorImageDataset, class_names: Sequence[str], batch_size: int = 64
) -> dict[str, float]:
    """mIoU (as :func:`geosane.tasks.evaluate`), per-class IoU and F1 and macro F1 (torchmetrics),
    ignoring unlabelled pixels; a class absent from both the labels and the predictions is NaN."""
    model.eval()
    k = len(class_names)
    miou = make_metric("segmentation", k)
    iou = torchmetrics.JaccardIndex(
        task="multiclass",
        num_classes=k,
        ignore_index=IGNORE_INDEX,
        average="none",
        zero_division=float("nan"),
    )
    f1 = torchmetrics.F1Score(task="multiclass", num_classes=k, ignore_index=IGNORE_INDEX, average="none")
    for x, y in DataLoader(data, batch_size=batch_size):
        prediction = model(x).argmax(dim=1)
        for metric in (miou, iou, f1):
            metric.update(prediction, y)
    per_iou = iou.compute().tolist()
    # F1 has no NaN option; a class with no pixel in labels or predictions (IoU NaN) has no F1 either
    per_f1 = [
        float("nan") if math.isnan(i) else v for i, v in zip(per_iou, f1.compute().tolist(), strict=True)
    ]
    scores = {"miou": float(miou.compute())}
    scores.update({f"iou_{name}": float(v) for name, v in zip(class_names, per_iou, strict=True)})
    scores.update({f"f1_{name}": float(v) for name, v in zip(class_names, per_f1, strict=True)})
    scores["f1"] = float(np.nanmean(per_f1)) if not all(math.isnan(v) for v in per_f1) else float("nan")
    return scores


BASE_FIELDS = (
    "model",
    "target",
    "decoder",
    "adaptation",
    "fraction",
    "seed",
    "n_train",
    "metric",
    "select",
    "test",
)
TAIL_FIELDS = ("trainable_params", "seconds")


def _fields(rows: Sequence[dict[str, Any]]) -> list[str]:
    """CSV columns: the run's keys, then per-class IoU / F1 or RMSE / MAE (as the rows hold them)."""
    extra = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in BASE_FIELDS + TAIL_FIELDS]
    return [*BASE_FIELDS, *extra, *TAIL_FIELDS]


def _percent(fraction: float) -> str:
    return f"{float(fraction) * 100:g}%"


def _mean_std(values: Sequence[float]) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return "-"
    return f"{np.mean(finite):.3f} ± {np.std(finite):.3f}"


def _groups(rows: Sequence[dict[str, Any]]) -> list[tuple[str, str, float]]:
    return list(dict.fromkeys((r["model"], r["decoder"], float(r["fraction"])) for r in rows))


def decoder_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: test metric (mean ± std over seeds) per model, decoder and label fraction, frozen vs
    fine-tuned with the fine-tuning gain; then per-class IoU / F1 (mask) or RMSE / MAE (regression)."""
    if not rows:
        return "no decoder runs\n"
    adaptations = list(dict.fromkeys(r["adaptation"] for r in rows))
    metric = str(rows[0]["metric"])
    label = METRIC_LABEL.get(metric, metric)
    both = {"frozen", "finetuned"} <= set(adaptations)
    header = "| model | decoder | labels | " + " | ".join(f"{a} (test {label})" for a in adaptations) + " |"
    if both:
        header += " fine-tuning gain |"
    lines = [header, "|" + "---|" * (header.count("|") - 1)]

    def pick(model: str, decoder: str, fraction: float, adaptation: str) -> list[dict[str, Any]]:
        return [
            r
            for r in rows
            if r["model"] == model
            and r["decoder"] == decoder
            and float(r["fraction"]) == fraction
            and r["adaptation"] == adaptation
        ]

    for model, decoder, fraction in _groups(rows):
        means: dict[str, float] = {}
        cells = []
        for adaptation in adaptations:
            vals = [float(r["test"]) for r in pick(model, decoder, fraction, adaptation)]
            means[adaptation] = float(np.mean(vals)) if vals else float("nan")
            cells.append(_mean_std(vals))
        line = f"| {model} | {decoder} | {_percent(fraction)} | " + " | ".join(cells) + " |"
        if both:
            line += f" {means['finetuned'] - means['frozen']:+.3f} |"
        lines.append(line)
    seeds = sorted({int(r["seed"]) for r in rows})
    lines += ["", f"Mean ± std over seeds {seeds}; labels: share of the train split used for training."]
    extra = [k for k in rows[0] if k.startswith(("iou_", "f1_"))] + [
        k for k in ("f1", "rmse", "mae") if k in rows[0]
    ]
    if extra:
        title = "Per-class test IoU and F1" if metric == "miou" else "Test RMSE and MAE (target units)"
        lines += ["", f"{title}:", ""]
        head = "| model | decoder | labels | adaptation | " + " | ".join(extra) + " |"
        lines += [head, "|" + "---|" * (head.count("|") - 1)]
        for model, decoder, fraction in _groups(rows):
            for adaptation in adaptations:
                picked = pick(model, decoder, fraction, adaptation)
                if not picked:
                    continue
                cells = [_mean_std([float(r.get(k, "nan")) for r in picked]) for k in extra]
                lines.append(
                    f"| {model} | {decoder} | {_percent(fraction)} | {adaptation} | "
                    + " | ".join(cells)
                    + " |"
                )
    return "\n".join(lines) + "\n"
