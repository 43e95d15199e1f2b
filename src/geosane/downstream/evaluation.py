"""Zero-shot evaluation of a trained model on a task: ``geosane evaluate``.

The model is used as it is, with its own head, on the task's selection and test splits (no
training), so users can see that a pretrained model does what it claims before fine-tuning it, e.g.
the real csmask U-Net's cloud and shadow masks on the real scenes. The data pipeline is the one of
``geosane finetune`` (same presets, splits and normalization, ``auto`` taking the model's recorded
band statistics). Reported: the task metric and the metric of every class.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from geosane.console import console
from geosane.data import recorded_normalization
from geosane.downstream.config import FinetuneConfig
from geosane.downstream.data import load_task_data
from geosane.downstream.finetuning import build_task_model, output_dir
from geosane.downstream.inits import Initialization, arch_from_config, load_source, normalization_info
from geosane.errors import ConfigError, GeosaneError, SourceError
from geosane.io import claim_out_dir, write_json
from geosane.tasks import evaluate
from geosane.tasks.loop import primary_metric_name

__all__ = ["EvaluationResult", "evaluate_source", "print_evaluation"]


@dataclass
class EvaluationResult:
    """The metric of one model on the selection and test splits, overall and per class."""

    source: str
    task: str
    metric: str
    classes: list[str]
    scores: dict[str, float]  # split -> metric
    per_class: dict[str, list[float]]  # split -> metric of every class
    normalization: str
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_head_kept(
    model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str, classes: int
) -> None:
    """Refuse a model whose head was re-initialised for the task: zero-shot needs its own head."""
    own = model.state_dict()
    replaced = [k for k, v in state_dict.items() if k in own and not torch.equal(own[k].to(v.dtype), v)]
    lost = [k for k in state_dict if k not in own]
    if replaced or lost:
        name = (replaced or lost)[0]
        found = tuple(state_dict[name].shape)
        raise GeosaneError(
            f"{source}: its head does not fit the task's {classes} classes ('{name}' has shape {found}); "
            "zero-shot evaluation needs a model trained for these classes (fine-tune it instead)"
        )


def evaluate_source(config: FinetuneConfig, out: Path | None = None) -> EvaluationResult:
    """Evaluate ``config.init`` as it is on ``config.data`` (selection and test splits).

    ``out``: optional directory for ``evaluation.json`` (the one output-directory rule). Everything
    is checked before anything is written.
    """
    started = time.perf_counter()
    if config.init == "scratch":
        raise ConfigError("evaluate needs trained weights (init), not scratch")
    if out is not None:
        out = output_dir(out, "evaluate", {"init": config.init, "data.root": config.data.root})
    # the model as it is: its own architecture record wins over the preset's (which serves scratch)
    loaded = load_source(config.init)
    arch = loaded.arch or arch_from_config(config.arch)
    if arch is None:
        raise SourceError(
            f"{config.init}: the architecture of these weights is unknown; set arch.name"
            + loaded.unknown_architecture
        )
    init = Initialization("init", "source", arch, loaded.state_dict, config.init, normalization_info(loaded))
    recorded = recorded_normalization(init.info)
    data = load_task_data(config.data, config.task.kind, recorded)
    if data.task == "detection":
        raise ConfigError(
            "zero-shot evaluation covers classification and segmentation; for a detector, fine-tune it "
            "(geosane finetune) and read its test mAP@50"
        )
    kind, _, select_set, test_set = data.image_task()
    task = dataclasses.replace(config.task, reset_head=False)
    torch.manual_seed(0)
    model = build_task_model(init, data, task)
    assert init.state_dict is not None
    _check_head_kept(model, init.state_dict, config.init, data.num_classes)
    metric = primary_metric_name(kind)
    scores, per_class = {}, {}
    for split, dataset in (("select", select_set), ("test", test_set)):
        split_result = evaluate(model, kind, data.num_classes, dataset, per_class=True)
        scores[split], per_class[split] = split_result[metric], split_result["per_class"]
    if recorded is not None and data.normalization == recorded:
        normalization = "model"
    else:  # what load_task_data chose: auto without a record means the dataset's statistics
        normalization = "dataset" if config.data.normalization == "auto" else config.data.normalization
    result = EvaluationResult(
        config.init, data.task, metric, list(data.classes), scores, per_class, normalization,
        time.perf_counter() - started,
    )  # fmt: skip
    if out is not None:
        claim_out_dir(out, "evaluate")
        write_json(out / "evaluation.json", result.to_dict())
    return result


def print_evaluation(result: EvaluationResult) -> None:
    """A table: every class's metric on the selection and test splits, then the mean."""
    from rich.table import Table

    label = {"miou": "IoU", "accuracy": "recall", "map": "AP"}[result.metric]
    name = Path(result.source).name if Path(result.source).exists() else result.source
    table = Table(title=f"{name}: {result.task}, normalization {result.normalization}")
    table.add_column("class")
    for split in ("select", "test"):
        table.add_column(f"{split} {label}", justify="right")

    def cell(value: float) -> str:
        return "-" if math.isnan(value) else f"{100 * value:.1f}"

    for index, name in enumerate(result.classes):
        table.add_row(name, *(cell(result.per_class[s][index]) for s in ("select", "test")))
    table.add_row(
        f"[bold]{result.metric}[/]", *(f"[bold]{cell(result.scores[s])}[/]" for s in ("select", "test"))
    )
    console.print(table)
