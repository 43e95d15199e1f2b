"""Fine-tune one initialization on one task: ``geosane finetune`` and the runs of ``compare``.

A run directory holds, once finished::

    metrics.json          init, seed, metric, selection and test values, wall time (summed over
                          resumed attempts), torch threads, fingerprint
    history.csv           per epoch: train_loss, lr, select_<metric>
    weights.safetensors   the fine-tuned task model (metadata: arch, task, classes)

While it trains, ``checkpoint.ckpt`` (a Lightning checkpoint, written atomically after every
epoch) and ``run.json`` (the run's fingerprint) let an interrupted run resume; both are removed
when the run finishes. A finished run whose fingerprint (weights, architecture, data, budget, seed)
matches is skipped on rerun; a different one is refused unless ``overwrite`` is set.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback
from rich.progress import Progress
from torch import nn

from geosane.config import save_config, to_dict
from geosane.console import console, make_progress
from geosane.data import recorded_normalization
from geosane.downstream.config import FinetuneConfig, TaskConfig
from geosane.downstream.data import TaskSplits, load_task_data
from geosane.downstream.inits import Initialization, arch_from_config, load_source, normalization_info
from geosane.errors import ConfigError, GeosaneError, cli_flags
from geosane.io import check_out_dir, claim_out_dir, read_json, save_safetensors, write_json, write_text
from geosane.tasks import (
    Distillation,
    FitConfig,
    FitProgress,
    build_classifier,
    build_segmenter,
    evaluate,
    fit,
)
from geosane.tasks.loop import primary_metric_name
from geosane.zoo import ArchSpec, LoadedModel

__all__ = [
    "FinetuneResult",
    "RunPlan",
    "WallClock",
    "build_distillation",
    "build_task_model",
    "finetune",
    "initialization_from_source",
    "output_dir",
    "plan_run",
    "run_finetune",
    "task_metric",
]

DETECTION_METRIC = "map_50"  # mAP@50 (torchmetrics), the selection metric of detection runs
DETECTION_ONLY = ("detector", "fpn_channels")  # TaskConfig fields that only detection runs use


def task_metric(task: str) -> str:
    """The metric a task's runs are selected and reported on (detection: mAP@50)."""
    return DETECTION_METRIC if task == "detection" else primary_metric_name(task)  # type: ignore[arg-type]


def _detection_model(init: Initialization, data: TaskSplits, task: TaskConfig) -> nn.Module:
    """The detector for ``data``: a timm init becomes the backbone under a fresh FPN and heads
    (``task.detector``); a detector init (a zoo detector, generated detector weights) keeps its own
    record and heads, rebuilt for the task's classes, bands, image size and normalisation (a head
    for other classes, or every head with ``reset_head``, starts fresh)."""
    from geosane.tasks import backbone_with_weights, build_detector

    image_size = int(data.train.images.shape[-1])  # type: ignore[union-attr]
    norm = data.normalization
    if init.arch.library == "detector":
        kwargs = {
            **init.arch.kwargs,
            "num_classes": data.num_classes,
            "in_chans": data.in_chans,
            "image_size": image_size,
            "image_mean": list(norm.mean),
            "image_std": list(norm.std),
        }
        spec = ArchSpec("detector", init.arch.name, kwargs)
        return backbone_with_weights(
            spec, init.state_dict, num_classes=data.num_classes, reset_head=task.reset_head
        )
    return build_detector(
        init.arch, data.num_classes, kind=task.detector, in_chans=data.in_chans,
        backbone_weights=init.state_dict, image_size=image_size, normalization=norm,
        fpn_channels=task.fpn_channels,
    )  # fmt: skip


@dataclass
class FinetuneResult:
    """One finished run: metric values on the selection and test splits, and the curves."""

    init: str
    seed: int
    metric: str
    select: float
    test: float
    history: list[dict[str, float]] = field(default_factory=list)
    wall_s: float = 0.0
    out_dir: Path | None = None
    skipped: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "init": self.init,
            "seed": self.seed,
            "metric": self.metric,
            "select": self.select,
            "test": self.test,
            "wall_s": self.wall_s,
            "out_dir": str(self.out_dir) if self.out_dir else None,
        }


@dataclass
class RunPlan:
    """Where a run goes, its fingerprint, and what is there already."""

    out_dir: Path
    fingerprint: str
    state: str  # "new" | "done" | "resume" | "redo"


def build_task_model(init: Initialization, data: TaskSplits, task: TaskConfig) -> nn.Module:
    """The task model (classifier or segmenter) for ``data`` with ``init``'s backbone weights.

    A stem with another band count than the data is adapted (timm's ``adapt_input_conv`` rule).
    The classifier head is re-initialised (seeded) unless ``task.reset_head`` is off and the
    weights' head already fits the classes. Detection: :func:`_detection_model`.
    """
    if data.task == "detection":
        return _detection_model(init, data, task)
    state_dict = init.state_dict
    arch = init.arch
    if state_dict is not None:
        from geosane.arch.stem import adapt_stem

        loaded = LoadedModel(init.source, state_dict, arch)
        with contextlib.suppress(GeosaneError):  # no stem record: weights load as they are
            loaded = adapt_stem(loaded, data.in_chans)
        state_dict, arch = loaded.state_dict, loaded.arch or arch
    if data.task == "segmentation":
        return build_segmenter(
            arch,
            data.num_classes,
            decoder=task.decoder,
            state_dict=state_dict,
            in_chans=data.in_chans,
            decoder_channels=task.decoder_channels,
            reset_head=task.reset_head,
        )
    return build_classifier(
        arch, data.num_classes, state_dict=state_dict, in_chans=data.in_chans, reset_head=task.reset_head
    )


def build_distillation(init: Initialization, data: TaskSplits) -> Distillation | None:
    """The frozen teacher of a ``distillation`` run, checked against the task's classes."""
    teacher = init.teacher
    if teacher is None:
        return None
    if data.task != "classification" or list(teacher.classes) != list(data.classes):
        raise GeosaneError(
            f"the teacher {teacher.source} predicts {teacher.classes}, the task has {list(data.classes)} "
            f"({data.task}); distil from a model fine-tuned on this task's classes"
        )
    model = build_classifier(
        teacher.arch,
        data.num_classes,
        state_dict=teacher.state_dict,
        in_chans=data.in_chans,
        reset_head=False,
    )
    return Distillation(model, teacher.alpha, teacher.temperature)


def initialization_from_source(source: str, arch_config: Any, name: str | None = None) -> Initialization:
    """``scratch`` (needs ``arch.name``) or any source :func:`load_source` understands."""
    arch = arch_from_config(arch_config)
    if source == "scratch":
        if arch is None:
            raise ConfigError("init=scratch needs the architecture: set arch.name (e.g. arch.name=resnet18)")
        return Initialization(name or "scratch", "scratch", arch, None, "random init")
    loaded = load_source(source, arch)
    assert loaded.arch is not None
    return Initialization(
        name or "init", "source", loaded.arch, loaded.state_dict, source, normalization_info(loaded)
    )


def _fingerprint(
    init: Initialization,
    data: TaskSplits,
    task: TaskConfig,
    fit_config: FitConfig,
    data_config: Any,
    test_curve: bool = False,
) -> str:
    task_record = to_dict(task)
    if data.task != "detection":  # fields added for detection: other runs keep their fingerprint
        task_record = {k: v for k, v in task_record.items() if k not in DETECTION_ONLY}
    record: dict[str, Any] = {
        "weights": init.fingerprint(),
        "arch": init.arch.to_dict(),
        "task": task_record,
        "train": to_dict(dataclasses.replace(fit_config, progress=False, num_workers=0)),
        "data": to_dict(data_config),
        "sizes": data.sizes(),
        "classes": list(data.classes),
    }
    if test_curve:  # only then: runs finished before the option existed keep their fingerprint
        record["test_curve"] = True
    return hashlib.sha256(json.dumps(record, sort_keys=True, default=str).encode()).hexdigest()


def plan_run(
    out_dir: Path,
    init: Initialization,
    data: TaskSplits,
    task: TaskConfig,
    fit_config: FitConfig,
    data_config: Any,
    overwrite: bool = False,
    test_curve: bool = False,
) -> RunPlan:
    """Check ``out_dir`` against this run (before anything is written)."""
    fingerprint = _fingerprint(init, data, task, fit_config, data_config, test_curve)
    metrics, started = out_dir / "metrics.json", out_dir / "run.json"
    for path, state in ((metrics, "done"), (started, "resume")):
        if path.is_file():
            recorded = read_json(path).get("fingerprint")
            if recorded == fingerprint:
                return RunPlan(out_dir, fingerprint, state)
            if not overwrite:
                raise GeosaneError(
                    f"{out_dir} holds a run of '{init.name}' with other settings (weights, data, budget or "
                    "seed changed); choose another output directory or pass overwrite=True",
                    flags=cli_flags("overwrite"),
                )
            return RunPlan(out_dir, fingerprint, "redo")
    return RunPlan(out_dir, fingerprint, "new")


def _history_rows(history: list[dict[str, float]], metric: str) -> list[dict[str, float]]:
    rows: list[dict[str, float]] = []
    for row in history:
        out: dict[str, float] = {"epoch": int(row.get("epoch", 0))}
        out["train_loss"] = row.get("train_loss", float("nan"))
        out["lr"] = row.get("lr", float("nan"))
        out[f"select_{metric}"] = row.get(f"val_{metric}", float("nan"))
        if f"report_{metric}" in row:
            out[f"test_{metric}"] = row[f"report_{metric}"]
        rows.append(out)
    return rows


def csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return buffer.getvalue()


def _result_from_metrics(path: Path) -> FinetuneResult:
    data = read_json(path / "metrics.json")
    history = []
    with open(path / "history.csv", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            parsed = {k: float(v) for k, v in row.items()}
            entry = {
                "epoch": parsed["epoch"],
                "train_loss": parsed["train_loss"],
                "lr": parsed["lr"],
                f"val_{data['metric']}": parsed[f"select_{data['metric']}"],
            }
            if f"test_{data['metric']}" in parsed:
                entry[f"report_{data['metric']}"] = parsed[f"test_{data['metric']}"]
            if entry["epoch"] == 0:  # the test curve's epoch-0 row: the init before any training step
                del entry["train_loss"], entry["lr"]
            history.append(entry)
    return FinetuneResult(
        data["init"],
        data["seed"],
        data["metric"],
        data["select"],
        data["test"],
        history,
        data["wall_s"],
        path,
        True,
    )


class WallClock(Callback):
    """Wall time of a run across interruptions: the time spent up to each checkpoint travels in it.

    Work after the last checkpoint of an interrupted attempt is lost and not counted.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.previous_s = 0.0

    @property
    def elapsed_s(self) -> float:
        return self.previous_s + time.perf_counter() - self.start

    def state_dict(self) -> dict[str, float]:
        return {"elapsed_s": self.elapsed_s}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.previous_s = float(state_dict.get("elapsed_s", 0.0))


def run_finetune(
    init: Initialization,
    data: TaskSplits,
    task: TaskConfig,
    fit_config: FitConfig,
    plan: RunPlan,
    save_weights: bool = True,
    checkpoint: bool = True,
    progress: Progress | None = None,
    extra: dict[str, Any] | None = None,
    callbacks: Sequence[Callback] = (),
    test_curve: bool = False,
) -> FinetuneResult:
    """Fine-tune ``init`` on ``data`` into ``plan.out_dir`` (skips a finished run, resumes a started one).

    ``callbacks`` are extra Lightning callbacks (logging, profiling) added to the training loop.
    ``test_curve``: also record the test metric before training and after every epoch
    (``history.csv`` column ``test_<metric>``); it is only reported, never used for selection.
    """
    if plan.state == "done":
        return _result_from_metrics(plan.out_dir)
    out = plan.out_dir
    if plan.state == "redo":
        for name in ("metrics.json", "run.json", "checkpoint.ckpt", "history.csv", "weights.safetensors"):
            (out / name).unlink(missing_ok=True)
    metric = task_metric(data.task)
    clock = WallClock()
    torch.manual_seed(fit_config.seed)  # the fresh head (and scratch weights) depend on the seed only
    model = build_task_model(init, data, task)
    checkpoint_path = out / "checkpoint.ckpt" if checkpoint else None
    if checkpoint:
        write_json(
            out / "run.json", {"init": init.name, "seed": fit_config.seed, "fingerprint": plan.fingerprint}
        )
    callbacks = [*callbacks, clock]
    task_id = None
    if progress is not None:
        task_id = progress.add_task(f"{init.name} seed {fit_config.seed}", total=None, status="")
        callbacks.append(FitProgress(progress, task_id))
    if data.task == "detection":
        from geosane.tasks import evaluate_detection, fit_detection

        result = fit_detection(
            model, data.train, data.select, fit_config, checkpoint_path=checkpoint_path,  # type: ignore[arg-type]
            callbacks=callbacks, report=data.test if test_curve else None,  # type: ignore[arg-type]
            augment=bool(data.info.get("augment", True)),
        )  # fmt: skip
        test = evaluate_detection(model, data.test, fit_config.batch_size * 2)[metric]  # type: ignore[arg-type]
    else:
        kind, train, select_set, test_set = data.image_task()
        result = fit(
            model, kind, data.num_classes, train, select_set, fit_config,
            checkpoint_path=checkpoint_path, callbacks=callbacks, report=test_set if test_curve else None,
            distillation=build_distillation(init, data),
        )  # fmt: skip
        test = evaluate(model, kind, data.num_classes, test_set)[metric]
    wall = clock.elapsed_s  # build, training (over every resumed attempt) and test evaluation
    if progress is not None and task_id is not None:
        progress.remove_task(task_id)
    select = result.final.get(metric, float("nan"))
    write_text(out / "history.csv", csv_text(_history_rows(result.history, metric)))
    if save_weights:
        record = getattr(model, "record", None) if data.task == "detection" else None
        meta = {
            "arch": json.dumps(record or init.arch.to_dict()),
            "task": data.task,
            "classes": json.dumps(list(data.classes)),
            "in_chans": str(data.in_chans),
            "init": init.name,
        }
        if data.task == "segmentation":
            meta["decoder"] = task.decoder
        if data.task == "detection":
            meta["detector"] = str(getattr(model, "kind", task.detector))
        save_safetensors(model.state_dict(), out / "weights.safetensors", metadata=meta)
    metrics = {
        "init": init.name,
        "init_kind": init.kind,
        "source": init.source,
        "seed": fit_config.seed,
        "task": data.task,
        "metric": metric,
        "select": select,
        "test": test,
        "epochs": fit_config.epochs,
        "wall_s": wall,
        "resumed": clock.previous_s > 0,
        "threads": torch.get_num_threads(),
        "arch": init.arch.to_dict(),
        "classes": list(data.classes),
        "sizes": data.sizes(),
        "fingerprint": plan.fingerprint,
        **(extra or {}),
    }
    write_json(out / "metrics.json", metrics)  # written last: its presence marks the run finished
    for name in ("checkpoint.ckpt", "run.json"):
        (out / name).unlink(missing_ok=True)
    return FinetuneResult(init.name, fit_config.seed, metric, select, test, result.history, wall, out)


def output_dir(path: Path | None, command: str, inputs: dict[str, Any]) -> Path:
    """The checked output directory named by ``out`` (the one rule of :func:`geosane.io.check_out_dir`).

    ``inputs`` are the run's sources; the ones that are local paths may not be replaced by ``out``.
    """
    if path is None:
        raise ConfigError(
            "no output directory: set out: in the config",
            flags={"set out: in the config": "pass --out DIR (or set out: in the config)"},
        )
    out = Path(path).expanduser()
    check_out_dir(out, command, inputs)
    return out


def finetune(
    config: FinetuneConfig,
    overwrite: bool = False,
    show_progress: bool = True,
    callbacks: Sequence[Callback] = (),
) -> FinetuneResult:
    """Fine-tune ``config.init`` on ``config.data`` and write the run into ``config.out``.

    ``callbacks``: extra Lightning callbacks for the run.

    Everything is validated (data, weights, architecture, output directory) before the first file
    is written.
    """
    out = output_dir(
        config.out,
        "finetune",
        {"init": config.init, "data.root": config.data.root, "data.test_data": config.data.test_data},
    )
    init = initialization_from_source(
        config.init, config.arch, name="scratch" if config.init == "scratch" else "init"
    )
    data = load_task_data(config.data, config.task.kind, recorded_normalization(init.info))
    build_task_model(init, data, config.task)  # fails now, not after writing, if weights do not fit
    plan = plan_run(out, init, data, config.task, config.train, config.data, overwrite)
    if plan.state == "done":
        console.print(f"[green]already finished[/] {out} (same settings); nothing to do")
        return _result_from_metrics(out)
    if plan.state == "resume":
        console.print(f"resuming the interrupted run in {out}")
    claim_out_dir(out, "finetune")
    save_config(config, out / "config.yaml")
    if show_progress:
        with make_progress() as progress:
            return run_finetune(
                init, data, config.task, config.train, plan, checkpoint=config.checkpoint, progress=progress,
                callbacks=callbacks,
            )  # fmt: skip
    return run_finetune(
        init, data, config.task, config.train, plan, checkpoint=config.checkpoint, callbacks=callbacks
    )
