"""Train and evaluate task models with Lightning and torchmetrics.

:func:`fit` trains a classifier or segmenter under a fixed budget (epochs, optimizer, schedule,
seed) and records per-epoch curves; with ``checkpoint_path`` it saves a Lightning checkpoint
(atomically) after every epoch and resumes from it when it exists. :func:`evaluate` computes the
task metric on a dataset. :class:`FitProgress` shows a Rich progress bar per run.
Metrics: overall accuracy (single-label), macro mAP over the labels present in the evaluated data
(multi-label; a label without any positive has no defined AP and would count as 0 in
torchmetrics' macro average), mIoU with ``ignore_index`` (segmentation, torchmetrics'
confusion-matrix based Jaccard index).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
import torch.nn.functional as F
import torchmetrics
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from rich.progress import Progress, TaskID
from torch import nn
from torch.utils.data import DataLoader, Dataset

from geosane.data import IGNORE_INDEX
from geosane.runs import (
    ResumableRandomness,
    SafeCheckpointIO,
    SaveLastCheckpoint,
    fit_resumable,
    quiet_lightning,
)
from geosane.tasks.config import FitConfig
from geosane.tasks.models import TaskKind

__all__ = [
    "Distillation",
    "EpochCheckpoint",
    "FitConfig",
    "FitProgress",
    "FitResult",
    "PresentLabelAveragePrecision",
    "TaskModule",
    "evaluate",
    "fit",
    "make_metric",
    "primary_metric_name",
    "run_lightning_fit",
]


@dataclass
class FitResult:
    """Per-epoch history (train loss, lr and validation/test metric) and final metrics."""

    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)


def primary_metric_name(task: TaskKind) -> str:
    return {"classification": "accuracy", "multilabel": "map", "segmentation": "miou"}[task]


class PresentLabelAveragePrecision(torchmetrics.classification.MultilabelAveragePrecision):
    """Macro average precision over the labels with at least one positive target.

    torchmetrics scores a label without positives as AP 0 (with a warning), which drags the macro
    mean down on small or capped evaluation splits; such labels are left out here instead.
    """

    positives: torch.Tensor  # the metric state added in __init__

    def __init__(self, num_labels: int) -> None:
        super().__init__(num_labels=num_labels, average=None)
        self.add_state("positives", torch.zeros(num_labels), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        super().update(preds, target)
        self.positives += (target == 1).sum(dim=0).to(self.positives.dtype)

    def compute(self) -> torch.Tensor:  # type: ignore[override]  # as torchmetrics' own AP metrics
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*No positive samples.*")
            per_label = super().compute()
        present = self.positives > 0
        return per_label[present].mean() if present.any() else torch.tensor(float("nan"))


def make_metric(
    task: TaskKind, num_classes: int, ignore_index: int | None = IGNORE_INDEX
) -> torchmetrics.Metric:
    """The task's headline metric as a torchmetrics object."""
    if task == "classification":
        return torchmetrics.Accuracy(task="multiclass", num_classes=num_classes, average="micro")
    if task == "multilabel":
        return PresentLabelAveragePrecision(num_labels=num_classes)
    return torchmetrics.JaccardIndex(
        task="multiclass", num_classes=num_classes, ignore_index=ignore_index, average="macro"
    )


def task_loss(
    task: TaskKind, logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    if task == "multilabel":
        return F.binary_cross_entropy_with_logits(logits, target.float())
    if task == "segmentation":
        return F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, label_smoothing=label_smoothing)
    return F.cross_entropy(logits, target, label_smoothing=label_smoothing)


@dataclass
class Distillation:
    """Knowledge distillation (Hinton et al. 2015): the loss adds the teacher's softened predictions.

    ``loss = (1 - alpha) * task loss + alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T))``
    over the class dimension (per pixel for segmentation). The teacher stays frozen in eval mode and
    is not part of the trained module, so checkpoints hold the student only.
    """

    teacher: nn.Module
    alpha: float = 0.5
    temperature: float = 4.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0 or self.temperature <= 0:
            raise ValueError(
                f"distillation needs 0 <= alpha <= 1 and temperature > 0, got {self.alpha}, {self.temperature}"
            )
        self.teacher.eval().requires_grad_(False)

    def loss(self, student_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            teacher_logits = self.teacher(x)
        t = self.temperature
        log_student = F.log_softmax(student_logits / t, dim=1)
        soft_teacher = F.log_softmax(teacher_logits / t, dim=1)
        kl = F.kl_div(log_student, soft_teacher, log_target=True, reduction="none").sum(dim=1)
        return kl.mean() * t * t


def _backbone_and_head(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split parameters into backbone and head (timm classifier head, or a segmenter's decoder)."""
    if hasattr(model, "decoder") and hasattr(model, "backbone"):
        head = list(cast(nn.Module, model.decoder).parameters())
    elif hasattr(model, "get_classifier"):
        head = list(cast(Any, model).get_classifier().parameters())  # timm models
    else:
        head = []
    head_ids = {id(p) for p in head}
    return [p for p in model.parameters() if id(p) not in head_ids], head


class FitModule(L.LightningModule):
    """What every task family's LightningModule shares: the per-epoch history (train loss, lr,
    ``val_*`` on select, ``report_*`` on a reported split), its checkpoint hooks, the frozen
    backbone and the warm-up + cosine optimiser. A family supplies its metric through
    :meth:`configure_metrics` / :meth:`compute_metrics` and its steps."""

    metric_name: str

    def __init__(self, model: nn.Module, config: FitConfig) -> None:
        super().__init__()
        self.model = model
        self.config = config
        self.val_metric = self.configure_metrics()
        self.report_metric = self.configure_metrics()
        self.history: list[dict[str, float]] = []
        self._epoch_loss: list[float] = []
        if config.freeze_backbone:
            backbone, _ = _backbone_and_head(model)
            for p in backbone:
                p.requires_grad_(False)

    def configure_metrics(self) -> torchmetrics.Metric:
        """A fresh metric for one split (called for select and for the reported split)."""
        raise NotImplementedError

    def compute_metrics(self, metric: torchmetrics.Metric) -> dict[str, float]:
        """The epoch's values of ``metric``, by name (the primary one is :attr:`metric_name`)."""
        return {self.metric_name: float(metric.compute())}

    def on_train_epoch_start(self) -> None:
        if self.config.freeze_backbone:  # keep frozen BatchNorm statistics frozen too
            backbone = cast(nn.Module, self.model.backbone) if hasattr(self.model, "backbone") else self.model
            for m in backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()

    def _record(self, epoch: float, values: dict[str, float]) -> None:
        """Merge ``values`` into the history row of ``epoch`` (train and validation hooks each add theirs)."""
        if self.history and self.history[-1].get("epoch") == epoch:
            self.history[-1].update(values)
        else:
            self.history.append({"epoch": epoch, **values})

    def on_train_epoch_end(self) -> None:
        row = {
            "train_loss": sum(self._epoch_loss) / max(len(self._epoch_loss), 1),
            "lr": float(self.trainer.optimizers[0].param_groups[-1]["lr"]),
        }
        self._epoch_loss.clear()
        self._record(float(self.current_epoch + 1), row)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking:
            self.val_metric.reset()
            return
        values = {f"val_{k}": v for k, v in self.compute_metrics(self.val_metric).items()}
        self.val_metric.reset()
        if self.report_metric.update_called:
            values.update({f"report_{k}": v for k, v in self.compute_metrics(self.report_metric).items()})
            self.report_metric.reset()
        self._record(float(self.current_epoch + 1), values)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["geosane_history"] = [dict(row) for row in self.history]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.history = [dict(row) for row in checkpoint.get("geosane_history", [])]

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        backbone, head = _backbone_and_head(self.model)
        groups = [
            {"params": [p for p in head if p.requires_grad], "lr": self.config.lr},
            {
                "params": [p for p in backbone if p.requires_grad],
                "lr": self.config.lr * self.config.backbone_lr_scale,
            },
        ]
        groups = [g for g in groups if g["params"]]
        optimizer = torch.optim.AdamW(groups, weight_decay=self.config.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        steps_per_epoch = max(total // max(self.config.epochs, 1), 1)
        warmup = min(int(self.config.warmup_epochs * steps_per_epoch), total - 1)

        def schedule(step: int) -> float:  # linear warm-up then cosine decay, per optimizer step
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class TaskModule(FitModule):
    """LightningModule for classification, multi-label classification and segmentation."""

    def __init__(
        self,
        model: nn.Module,
        task: TaskKind,
        num_classes: int,
        config: FitConfig,
        distillation: Distillation | None = None,
    ) -> None:
        self.task = task
        self.num_classes = num_classes
        self.metric_name = primary_metric_name(task)
        super().__init__(model, config)
        self._distillation = [distillation] if distillation is not None else []  # a list: not a submodule

    def configure_metrics(self) -> torchmetrics.Metric:
        return make_metric(self.task, self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = task_loss(self.task, logits, y, self.config.label_smoothing)
        if self._distillation:
            distill = self._distillation[0]
            loss = (1.0 - distill.alpha) * loss + distill.alpha * distill.loss(logits, x)
        self._epoch_loss.append(float(loss.detach()))
        return loss

    def validation_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        x, y = batch
        metric = self.val_metric if dataloader_idx == 0 else self.report_metric
        metric.update(_metric_input(self.task, self(x)), y)


# The name geosane.tasks exports for the callback ``fit`` writes its per-epoch checkpoint with.
EpochCheckpoint = SaveLastCheckpoint


class FitProgress(Callback):
    """Advance a Rich progress task by one per training batch; show epoch, loss and metric."""

    def __init__(self, progress: Progress, task_id: TaskID) -> None:
        super().__init__()
        self.progress = progress
        self.task_id = task_id

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        per_epoch = int(trainer.num_training_batches)
        assert trainer.max_epochs is not None  # fit() sets max_epochs=config.epochs
        done = trainer.current_epoch * per_epoch
        self.progress.update(self.task_id, total=trainer.max_epochs * per_epoch, completed=done)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self.progress.advance(self.task_id)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        history = getattr(pl_module, "history", None)
        if history:
            row = history[-1]
            parts = [f"epoch {int(row['epoch'])}/{trainer.max_epochs}"]
            parts += [f"{k} {v:.3f}" for k, v in row.items() if k in ("train_loss",) or k.startswith("val_")]
            self.progress.update(self.task_id, status=" ".join(parts))


def _metric_input(task: TaskKind, logits: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(logits) if task == "multilabel" else logits.argmax(dim=1)


def run_lightning_fit(
    module: L.LightningModule,
    train_loader: DataLoader[Any],
    val_loaders: Any,
    config: FitConfig,
    checkpoint_path: str | Path | None,
    resume: str | None,
    generator: torch.Generator,
    callbacks: Sequence[Callback] = (),
) -> None:
    """The one Lightning fit every task family runs (classification, segmentation, detection): one
    device, no logger, a checkpoint after every epoch with the data-order and augmentation RNGs
    (bitwise resume from ``resume``), weights-only checkpoint reads, Ctrl-C as
    :class:`geosane.errors.Interrupted` with a line on how to resume."""
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator="auto",
        devices=1,
        precision=config.precision,  # type: ignore[arg-type]
        logger=False,
        enable_checkpointing=checkpoint_path is not None,
        callbacks=[
            *callbacks,
            *(
                [EpochCheckpoint(checkpoint_path), ResumableRandomness(data_order=generator)]
                if checkpoint_path
                else []
            ),
        ],
        plugins=[SafeCheckpointIO()],
        enable_model_summary=False,
        enable_progress_bar=config.progress,
        num_sanity_val_steps=0,
        deterministic=False,
    )
    fit_resumable(
        trainer,
        module,
        train_loader,
        val_loaders,
        ckpt_path=resume,
        weights_only=True if resume else None,
        resume_hint=(
            f"the last finished epoch is saved in {checkpoint_path}; rerun the same command to resume"
            if checkpoint_path
            else "this run keeps no checkpoint; rerun to start again"
        ),
    )


def fit(
    model: nn.Module,
    task: TaskKind,
    num_classes: int,
    train: Dataset,
    val: Dataset | None = None,
    config: FitConfig | None = None,
    checkpoint_path: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    report: Dataset | None = None,
    distillation: Distillation | None = None,
) -> FitResult:
    """Train ``model`` in place on ``train`` under ``config``; evaluate on ``val`` after every epoch.

    ``report``: a dataset that is only *reported* (a test split): its metric is recorded as
    ``report_<metric>`` after every epoch and, with ``val``, both are recorded before training as an
    epoch-0 row (the initialization as it is, SANE's epoch-0 accuracy). Never used for selection.
    ``distillation``: also learn from a frozen teacher's predictions (:class:`Distillation`).

    Returns the per-epoch history and the final validation metric (``final``). Deterministic for a
    given seed on CPU. ``callbacks`` are extra Lightning callbacks (e.g. a progress display). With
    ``checkpoint_path``, a checkpoint is written there after every epoch and, when the file already
    exists, training resumes from it (weights, optimizer, schedule, epoch, history and random number
    generators, so the resumed run is bitwise the uninterrupted one); it is loaded with
    ``weights_only=True``. Ctrl-C raises :class:`geosane.errors.Interrupted`.
    """
    config = config or FitConfig()
    quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)
    module = TaskModule(model, task, num_classes, config, distillation)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(
        train,
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=len(cast(Sized, train)) > config.batch_size,
        num_workers=config.num_workers,
        generator=generator,
    )
    val_loader: DataLoader | list[DataLoader] | None = (
        DataLoader(val, batch_size=config.batch_size * 2, num_workers=config.num_workers)
        if val is not None
        else None
    )
    resume = str(checkpoint_path) if checkpoint_path is not None and Path(checkpoint_path).is_file() else None
    if report is not None and val_loader is not None:
        assert isinstance(val_loader, DataLoader) and val is not None
        val_loader = [
            val_loader,
            DataLoader(report, batch_size=config.batch_size * 2, num_workers=config.num_workers),
        ]
        if resume is None:  # a resumed run has its epoch-0 row in the checkpoint's history
            metric = module.metric_name
            before = {
                f"val_{metric}": evaluate(model, task, num_classes, val, config.batch_size * 2)[metric],
                f"report_{metric}": evaluate(model, task, num_classes, report, config.batch_size * 2)[metric],
            }
            module.history.append({"epoch": 0.0, **before})
            model.train()
    run_lightning_fit(module, train_loader, val_loader, config, checkpoint_path, resume, generator, callbacks)
    result = FitResult(history=module.history)
    if val is not None and module.history:
        key = f"val_{module.metric_name}"
        result.final = {module.metric_name: module.history[-1].get(key, float("nan"))}
    model.eval()
    return result


@torch.no_grad()
@torch.no_grad()
def evaluate(
    model: nn.Module,
    task: TaskKind,
    num_classes: int,
    data: Dataset,
    batch_size: int = 64,
    per_class: bool = False,
) -> dict[str, Any]:
    """The task metric of ``model`` on ``data`` (eval mode, no gradient).

    ``per_class`` adds ``per_class``: the metric of every class (IoU for segmentation, recall for
    classification, AP for multi-label; NaN for a class absent from ``data`` and its predictions).
    """
    model.eval()
    metric = make_metric(task, num_classes)
    per = _per_class_metric(task, num_classes) if per_class else None
    for x, y in DataLoader(data, batch_size=batch_size):
        prediction = _metric_input(task, model(x))
        metric.update(prediction, y)
        if per is not None:
            per.update(prediction, y)
    result: dict[str, Any] = {primary_metric_name(task): float(metric.compute())}
    if per is not None:
        result["per_class"] = [float(v) for v in per.compute().tolist()]
    return result


def _per_class_metric(task: TaskKind, num_classes: int) -> torchmetrics.Metric:
    if task == "segmentation":
        return torchmetrics.JaccardIndex(
            task="multiclass",
            num_classes=num_classes,
            ignore_index=IGNORE_INDEX,
            average="none",
            zero_division=float("nan"),
        )
    if task == "multilabel":
        return torchmetrics.classification.MultilabelAveragePrecision(num_labels=num_classes, average=None)
    return torchmetrics.Recall(task="multiclass", num_classes=num_classes, average="none")
