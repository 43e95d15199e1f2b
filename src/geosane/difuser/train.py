"""Train SatDiFuser's fuser + head on cached UNet features (``geosane difuse CONFIG``).

Pipeline: load the labelled data and its train / select / test split; load the frozen UNet and
check the layers and timesteps; build the fuser and head (every check happens before anything is
written); cache the UNet features once per (image, timestep); train with Lightning (Adam, linear
warm-up then cosine, early stopping and best-checkpoint selection on ``select``); evaluate once on
``test``; write ``report.json``, ``metrics.json`` with the confusion matrix (rows = true class,
columns = predicted class), ``fusion_weights.json`` + ``fusion_weights.png`` and the best weights
(``model.safetensors``; also ``checkpoints/best.safetensors`` while training, next to the
resumable ``checkpoints/last.ckpt``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
import yaml
from lightning.pytorch.callbacks import Callback, EarlyStopping
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from safetensors.torch import load_file
from torch.utils.data import DataLoader

from geosane.config import flatten_dotted, save_config, to_dict
from geosane.console import console
from geosane.difuser.backbone import DiffusionBackbone, read_metadata_file
from geosane.difuser.cache import CachedFeatureDataset, FeatureCache
from geosane.difuser.config import DifuseConfig, apply_threads
from geosane.difuser.data import TaskData, load_task_data
from geosane.difuser.fusers import MoEFuser, StreamLayout, build_fuser
from geosane.difuser.heads import DifuserModel, build_head
from geosane.difuser.plots import plot_confusion, plot_fusion_weights
from geosane.errors import ConfigError, GeosaneError, cli_flags
from geosane.io import claim_out_dir, load_torch, save_safetensors, write_json
from geosane.runs import (
    ResumableRandomness,
    SafeCheckpointIO,
    SaveLastCheckpoint,
    fit_resumable,
    keeps_torch_threads,
    quiet_lightning,
)
from geosane.tasks import FitConfig, TaskKind, TaskModule, make_metric, primary_metric_name

__all__ = ["DifuserModule", "build_model", "evaluate_model", "prepare_features", "run_difuse"]


def difuser_loss(
    task: TaskKind, logits: torch.Tensor, target: torch.Tensor, ignore_index: int
) -> torch.Tensor:
    """Cross-entropy (single-label, segmentation with ``ignore_index``) or BCE (multi-label)."""
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, target.float())
    if task == "segmentation":
        return F.cross_entropy(logits, target, ignore_index=ignore_index)
    return F.cross_entropy(logits, target)


class DifuserModule(TaskModule):
    """``geosane.tasks.TaskModule`` for a :class:`DifuserModel`: adds the fuser's auxiliary loss,
    honours ``ignore_index``, logs the selection metric for early stopping and counts MoE warm-up
    in optimizer steps."""

    model: DifuserModel  # TaskModule keeps the model it was given

    def __init__(
        self,
        model: DifuserModel,
        task: TaskKind,
        num_classes: int,
        config: FitConfig,
        ignore_index: int = 255,
        best_path: Path | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(model, task, num_classes, config)
        self.ignore_index = ignore_index
        self.val_metric = make_metric(task, num_classes, ignore_index)
        self._aux_losses: list[float] = []
        self.best_path = best_path
        self.run_config = run_config  # stored in checkpoints: a resume must run the same schedule
        self.best_score = float("-inf")
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None

    def training_step(self, batch: tuple[Any, torch.Tensor], batch_idx: int) -> torch.Tensor:
        features, target = batch
        logits = self.model(features)
        loss = difuser_loss(self.task, logits, target, self.ignore_index)
        aux = self.model.aux_loss().to(loss.device)
        self._epoch_loss.append(float(loss.detach()))
        self._aux_losses.append(float(aux.detach()))
        return loss + aux

    def _train_stats(self) -> dict[str, float]:
        return {
            "train_loss": sum(self._epoch_loss) / max(len(self._epoch_loss), 1),
            "aux_loss": sum(self._aux_losses) / max(len(self._aux_losses), 1),
            "lr": float(self.trainer.optimizers[0].param_groups[-1]["lr"]),
        }

    def on_train_epoch_end(self) -> None:
        if not self._epoch_loss:  # resumed from a checkpoint written at this epoch's end: already recorded
            return
        stats = self._train_stats()
        self._aux_losses.clear()
        super().on_train_epoch_end()
        self.history[-1].update(stats)

    def on_validation_epoch_end(self) -> None:
        sanity = self.trainer.sanity_checking
        super().on_validation_epoch_end()
        if sanity:
            return
        if self._epoch_loss:  # record the epoch's training stats now: last.ckpt is written before epoch end
            self.history[-1].update(self._train_stats())
        value = self.history[-1][f"val_{self.metric_name}"]
        self.log("val_metric", value, prog_bar=False)
        if value > self.best_score:  # keep the best weights on select (ties keep the earlier epoch)
            self.best_score, self.best_epoch = value, self.current_epoch + 1
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            if self.best_path is not None:
                save_safetensors(self.best_state, self.best_path, metadata={"epoch": str(self.best_epoch)})

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["geosane_history"] = [dict(row) for row in self.history]
        checkpoint["geosane_best"] = {"score": self.best_score, "epoch": self.best_epoch}
        if self.run_config is not None:
            checkpoint["geosane_config"] = self.run_config

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = [dict(row) for row in checkpoint.get("geosane_history", [])]
        best = checkpoint.get("geosane_best", {})
        self.best_score = float(best.get("score", float("-inf")))
        self.best_epoch = int(best.get("epoch", 0))
        if self.best_path is not None and self.best_path.is_file():
            self.best_state = load_file(str(self.best_path))

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        config = super().configure_optimizers()
        fuser = self.model.fuser
        if isinstance(fuser, MoEFuser):  # warm-up counts optimizer steps, never eval passes
            self._moe_hook = fuser.attach(config["optimizer"])
        return config


def build_model(
    cfg: DifuseConfig, layout: StreamLayout, num_classes: int, output_size: tuple[int, int]
) -> DifuserModel:
    """Fuser (``cfg.fuser``) + head (``cfg.decoder``) over ``layout``."""
    fuser = build_fuser(cfg.fuser, layout)
    head = build_head(cfg.decoder, cfg.fuser.width, layout.num_scales, num_classes)
    return DifuserModel(fuser, head, output_size if cfg.task.kind == "segmentation" else None)


@keeps_torch_threads
def prepare_features(
    cfg: DifuseConfig, build: bool = True
) -> tuple[FeatureCache, TaskData, DiffusionBackbone]:
    """Load data and backbone (validating both) and, with ``build``, fill the feature cache."""
    apply_threads(cfg.num_threads)
    data = load_task_data(cfg.task, cfg.backbone.image_size)
    backbone = DiffusionBackbone.from_config(cfg.backbone, cfg.device)
    if int(data.images.shape[1]) != backbone._image_channels():
        raise GeosaneError(
            f"the task images have {data.images.shape[1]} bands but the diffusion model takes "
            f"{backbone._image_channels()}; choose task.bands"
        )
    metadata = None
    if cfg.backbone.conditioning.metadata_file is not None:
        names = data.info.get("images")
        if not names:
            raise ConfigError(
                f"backbone.conditioning.metadata_file needs image names; task.dataset {cfg.task.dataset} has none"
            )
        metadata = read_metadata_file(cfg.backbone.conditioning.metadata_file, list(names))
    cache = FeatureCache(cfg.cache_dir, backbone, data.images, data.digest(), metadata=metadata)
    if build:
        cache.build()
    return cache, data, backbone


def _metric_collection(task: TaskKind, num_classes: int, ignore_index: int) -> torchmetrics.MetricCollection:
    if task == "multilabel":
        return torchmetrics.MetricCollection(
            {
                "map": torchmetrics.AveragePrecision(
                    task="multilabel", num_labels=num_classes, average="macro"
                ),
                "macro_f1": torchmetrics.F1Score(task="multilabel", num_labels=num_classes, average="macro"),
                "micro_f1": torchmetrics.F1Score(task="multilabel", num_labels=num_classes, average="micro"),
            }
        )
    ignore = ignore_index if task == "segmentation" else None
    return torchmetrics.MetricCollection(
        {
            "confusion": torchmetrics.ConfusionMatrix(
                task="multiclass", num_classes=num_classes, ignore_index=ignore
            ),
        }
    )


@torch.no_grad()
def evaluate_model(
    model: DifuserModel,
    loader: DataLoader,
    task: TaskKind,
    classes: tuple[str, ...],
    ignore_index: int = 255,
) -> dict[str, Any]:
    """Task metrics of ``model`` on ``loader`` (eval mode), torchmetrics throughout.

    Single-label and segmentation: the confusion matrix ``[true, predicted]`` (torchmetrics'
    orientation: row i counts samples of true class i), and from it overall accuracy, macro F1,
    per-class precision (column-normalised diagonal), recall (row-normalised) and IoU; pixels
    equal to ``ignore_index`` are left out of every number. Multi-label: macro mAP and F1.
    """
    model.eval()
    num_classes = len(classes)
    metrics = _metric_collection(task, num_classes, ignore_index)
    headline = make_metric(task, num_classes, ignore_index)
    for features, target in loader:
        logits = model(features)
        if task == "multilabel":
            probs = torch.sigmoid(logits)
            metrics.update(probs, target.long())
            headline.update(probs, target.long())
        else:
            pred = logits.argmax(dim=1)
            metrics.update(pred, target)
            headline.update(pred, target)
    values = metrics.compute()
    out: dict[str, Any] = {primary_metric_name(task): float(headline.compute())}
    if task == "multilabel":
        out.update({k: float(v) for k, v in values.items()})
        return out
    conf = values["confusion"].double()
    tp = conf.diag()
    true_total, pred_total = conf.sum(dim=1), conf.sum(dim=0)
    precision = torch.where(pred_total > 0, tp / pred_total.clamp_min(1), torch.zeros_like(tp))
    recall = torch.where(true_total > 0, tp / true_total.clamp_min(1), torch.zeros_like(tp))
    f1 = torch.where(
        precision + recall > 0, 2 * precision * recall / (precision + recall).clamp_min(1e-12), 0.0
    )
    union = true_total + pred_total - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.zeros_like(tp))
    out.update(
        {
            "overall_accuracy": float(tp.sum() / conf.sum().clamp_min(1)),
            "macro_f1": float(f1.mean()),
            "per_class": {
                name: {
                    "precision": float(precision[i]),
                    "recall": float(recall[i]),
                    "f1": float(f1[i]),
                    "iou": float(iou[i]),
                    "support": int(true_total[i]),
                }
                for i, name in enumerate(classes)
            },
            "confusion_matrix": {
                "rows": "true class",
                "columns": "predicted class",
                "classes": list(classes),
                "counts": conf.long().tolist(),
            },
        }
    )
    if task == "segmentation":
        out["ignored_index"] = ignore_index
    return out


def _loaders(
    cache: FeatureCache, data: TaskData, cfg: DifuseConfig
) -> tuple[DataLoader, DataLoader, DataLoader]:
    def make(split: str, shuffle: bool) -> DataLoader:
        dataset = CachedFeatureDataset(cache, data.splits[split], data.targets)
        return DataLoader(
            dataset,
            batch_size=cfg.train.batch_size,
            shuffle=shuffle,
            drop_last=shuffle and len(dataset) > cfg.train.batch_size,
            num_workers=cfg.train.num_workers,
            generator=torch.Generator().manual_seed(cfg.train.seed) if shuffle else None,
        )

    return make("train", True), make("select", False), make("test", False)


# Keys a resume may change: they do not touch the model, the data or the schedule.
RESUME_FREE_KEYS = frozenset(
    {
        "train.progress",
        "train.num_workers",
        "num_threads",
        "device",
        "cache_dir",
        "backbone.batch_size",
        "seeds",
    }
)


def _plain_config(cfg: DifuseConfig) -> dict[str, Any]:
    """The composed config as plain JSON types (paths as strings), as it is stored in checkpoints."""
    return json.loads(json.dumps(to_dict(cfg), default=str))


def check_resume_config(run_config: dict[str, Any], last: Path, out: Path) -> None:
    """Refuse a resume whose config differs from the one the run started with (before anything is written).

    A resume continues the run's own schedule (linear warm-up then cosine over the *original*
    ``train.epochs``, its batch size, learning rate and early stopping); changing the budget would
    leave the cosine curve finished (lr 0) or bent mid-way, so it is refused instead. Only
    :data:`RESUME_FREE_KEYS` (progress bars, threads, device, cache location) may change.
    """
    checkpoint = load_torch(last)
    started = checkpoint.get("geosane_config") if isinstance(checkpoint, dict) else None
    if started is None and (out / "config.yaml").is_file():  # a checkpoint written before configs were stored
        started = json.loads(
            json.dumps(yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8")), default=str)
        )
    if started is None:
        return
    old, new = flatten_dotted(started), flatten_dotted(run_config)
    # a key the started config lacks is newer than the run (an old config.yaml): not compared
    changed = [k for k in sorted(old) if k not in RESUME_FREE_KEYS and old[k] != new.get(k)]
    if not changed:
        return
    key = changed[0]
    more = f" (and {len(changed) - 1} more: {', '.join(changed[1:4])})" if len(changed) > 1 else ""
    raise GeosaneError(
        f"resume=True: {key} is {new.get(key)!r} but the run in {out} was started with {old.get(key)!r}{more}; "
        "resuming continues the schedule the run started with (warm-up, then cosine over its "
        f"{old.get('train.epochs')} epochs), so its config cannot change. Rerun with {key}={old.get(key)!r}, "
        "or start a new run in another output_dir (nothing was written)",
        flags=cli_flags("resume"),
    )


@keeps_torch_threads
def run_difuse(cfg: DifuseConfig, resume: bool = False, callbacks: Sequence[Callback] = ()) -> dict[str, Any]:
    """Train and evaluate one SatDiFuser experiment; returns (and writes) the report.

    ``resume`` continues from ``output_dir/checkpoints/last.ckpt`` exactly where it stopped (RNG
    states included). ``callbacks``: extra Lightning callbacks.
    """
    if cfg.seeds is not None:
        raise ConfigError(
            f"seeds {cfg.seeds} asks for a seed sweep: run it with geosane.difuser.run_difuse_sweep "
            "(the difuse command does), or set train.seed for one run"
        )
    apply_threads(cfg.num_threads)
    out = Path(cfg.output_dir).expanduser()
    last = out / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise GeosaneError(f"resume=True: no checkpoint at {last}", flags=cli_flags("resume"))
    if not resume and last.is_file():
        raise GeosaneError(
            f"{out} already holds a training run; pass resume=True or choose another output_dir",
            flags=cli_flags("resume"),
        )
    run_config = _plain_config(cfg)
    if resume:
        check_resume_config(run_config, last, out)
    quiet_lightning()
    cache, data, backbone = prepare_features(cfg, build=False)
    layout = StreamLayout.from_layers(backbone.layers, backbone.save_timesteps, cfg.fuser.group)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    output_size = (
        (int(data.targets.shape[-2]), int(data.targets.shape[-1])) if data.kind == "segmentation" else (0, 0)
    )
    model = build_model(cfg, layout, data.num_classes, output_size)
    # everything validated: from here on files are written
    claim_out_dir(out, "difuse", {"task.root": cfg.task.root, "cache_dir": cfg.cache_dir})
    save_config(cfg, out / "config.yaml")
    start = time.perf_counter()
    cache.build()
    extract_seconds = time.perf_counter() - start
    console.print(
        f"{cfg.fuser.name.upper()} fuser over {len(layout.timesteps)} timesteps x {len(layout.groups)} groups "
        f"({sum(p.numel() for p in model.parameters()):,} trainable parameters); "
        f"splits train {len(data.splits['train'])} / select {len(data.splits['select'])} / test {len(data.splits['test'])}"
    )
    train_loader, select_loader, test_loader = _loaders(cache, data, cfg)
    fit_config = FitConfig(
        **cfg.train.budget(),
        seed=cfg.train.seed,
        num_workers=cfg.train.num_workers,
        progress=cfg.train.progress,
    )
    module = DifuserModule(
        model,
        data.kind,
        data.num_classes,
        fit_config,
        cfg.task.ignore_index,
        out / "checkpoints" / "best.safetensors",
        run_config=run_config,
    )
    trainer = L.Trainer(
        max_epochs=cfg.train.epochs,
        accelerator="cpu" if cfg.device == "cpu" else "auto",
        devices=1,
        logger=False,
        enable_checkpointing=True,  # SaveLastCheckpoint is the only Checkpoint callback
        callbacks=[
            *callbacks,
            EarlyStopping(
                monitor="val_metric", mode="max", patience=cfg.train.patience, check_on_train_epoch_end=False
            ),
            ResumableRandomness(data_order=train_loader.generator),
            SaveLastCheckpoint(last),  # after EarlyStopping so that its state is included
        ],
        plugins=[SafeCheckpointIO()],
        enable_progress_bar=cfg.train.progress,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    start = time.perf_counter()
    fit_resumable(
        trainer, module, train_loader, select_loader, ckpt_path=str(last) if resume else None, weights_only=True,
        resume_hint=f"the last finished epoch is saved in {last}; rerun with resume=True",
        resume_flags={"rerun with resume=True": "rerun the same command with --resume"},
    )  # fmt: skip
    train_seconds = time.perf_counter() - start
    if module.best_state is None:
        raise GeosaneError("training produced no validation result on the select split")
    model.load_state_dict(module.best_state)
    model.fuser.reset_statistics()
    select_metrics = evaluate_model(model, select_loader, data.kind, data.classes, cfg.task.ignore_index)
    model.fuser.reset_statistics()
    test_metrics = evaluate_model(model, test_loader, data.kind, data.classes, cfg.task.ignore_index)
    fusion = model.fuser.summary()
    fusion["layout"] = layout.to_dict()
    save_safetensors(model.state_dict(), out / "model.safetensors", metadata={"format": "geosane-difuser"})
    write_json(out / "fusion_weights.json", fusion)
    plot_fusion_weights(
        fusion, out / "fusion_weights.png", title=f"{cfg.fuser.name.upper()} fusion ({data.kind})"
    )
    if "confusion_matrix" in test_metrics:
        plot_confusion(test_metrics["confusion_matrix"], out / "confusion_test.png")
    write_json(out / "metrics.json", {"select": select_metrics, "test": test_metrics})
    report = {
        "fuser": cfg.fuser.name,
        "task": data.kind,
        "metric": module.metric_name,
        "select": select_metrics[module.metric_name],
        "test": test_metrics[module.metric_name],
        "test_macro_f1": test_metrics.get("macro_f1"),
        "best_epoch": module.best_epoch,
        "epochs_run": len(module.history),
        "trainable_params": sum(p.numel() for p in model.parameters()),
        "extract_seconds": round(extract_seconds, 1),
        "train_seconds": round(train_seconds, 1),
        "feature_cache": str(cache.directory),
        "history": module.history,
        "config": to_dict(cfg),
    }
    write_json(out / "report.json", report)
    console.print(
        f"[bold]{cfg.fuser.name.upper()}[/]: select {module.metric_name} {report['select']:.4f}, "
        f"test {module.metric_name} {report['test']:.4f} (best epoch {report['best_epoch']}) -> {out}"
    )
    return report
