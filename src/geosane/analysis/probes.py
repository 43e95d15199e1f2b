"""Probes on frozen layer features: a trained MAE-style linear probe and closed-form variants.

Every probe ends as a :class:`Readout`, a linear map on standardized features, so all three share
prediction and scoring:

- ``linear``: a non-affine BatchNorm followed by a linear layer (MAE linear probing), trained with
  SGD or AdamW under a cosine schedule; for segmentation a 1x1 convolution on the block's map.
- ``ridge``: closed-form ridge regression on standardized features (one-hot targets for classes),
  the penalty picked on the ``select`` split from a grid, all penalties from one SVD.
- ``logistic``: scikit-learn's multinomial logistic regression, ``C`` picked on ``select``.

Segmentation probes classify every pixel of the block's map upsampled (bilinear) to the mask size.
Upsampling and a per-pixel affine map commute (bilinear weights sum to one), so the readout is
applied at the block's resolution and its logits are upsampled: the same predictions, far cheaper.

Per-frame features of temporal stacks (``[N, T, D]`` or ``[N, T, D, h, w]``) are either averaged
over T before any of the above (``temporal.aggregation: mean``) or read by :func:`fit_ltae_probe`:
an :class:`geosane.analysis.temporal.LTAE` and the ``linear`` probe trained jointly
(``temporal.aggregation: ltae``), scored through a :class:`TemporalReadout`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
import torchmetrics
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits
from torch import nn

from geosane.analysis.data import TaskName
from geosane.analysis.temporal import LTAE, TemporalSettings, aggregate
from geosane.data import IGNORE_INDEX
from geosane.runs import torch_threads
from geosane.tasks import make_metric

__all__ = [
    "LinearProbeConfig",
    "ProbeFit",
    "ProbeMethod",
    "Readout",
    "TemporalReadout",
    "fit_ltae_probe",
    "fit_probe",
    "metric_name",
    "score_readout",
    "single_thread",
]

ProbeMethod = Literal["ridge", "logistic", "linear"]


@dataclass
class LinearProbeConfig:
    """Training of the ``linear`` probe (MAE-style BatchNorm + linear layer)."""

    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 0.0
    epochs: int = 50
    batch_size: int = 256


@dataclass
class Readout:
    """``logits = ((x - mean) / std) @ weight + bias`` on vectors ``[N, D]`` or maps ``[N, D, h, w]``."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.dtype)
        if x.ndim == 4:
            z = (x - self.mean.view(1, -1, 1, 1)) / self.std.view(1, -1, 1, 1)
            return torch.einsum("ndhw,dk->nkhw", z, self.weight) + self.bias.view(1, -1, 1, 1)
        return ((x - self.mean) / self.std) @ self.weight + self.bias


@dataclass
class TemporalReadout:
    """A trained L-TAE over the frames followed by a :class:`Readout` (``temporal.aggregation: ltae``)."""

    aggregator: LTAE
    readout: Readout

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        self.aggregator.eval()
        return self.readout.logits(aggregate(x.float(), self.aggregator))


@dataclass
class ProbeFit:
    """A fitted probe, the hyper-parameter chosen on ``select`` (if any) and its ``select`` score."""

    readout: Readout | TemporalReadout
    select_score: float
    choice: str = ""


def metric_name(task: TaskName) -> str:
    return {"classification": "accuracy", "regression": "r2", "segmentation": "miou"}[task]


def _metric(task: TaskName, num_classes: int) -> torchmetrics.Metric:
    if task == "regression":
        return torchmetrics.R2Score()
    return make_metric(task, num_classes, ignore_index=IGNORE_INDEX)


@torch.no_grad()
def score_readout(
    readout: Readout | TemporalReadout,
    task: TaskName,
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    chunk: int = 64,
) -> float:
    """The task metric (accuracy, R², mIoU) of ``readout`` on features ``x`` and targets ``y``."""
    metric = _metric(task, num_classes)
    for start in range(0, x.shape[0], chunk):
        logits = readout.logits(x[start : start + chunk])
        target = y[start : start + chunk]
        if task == "segmentation":
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
            metric.update(logits.argmax(dim=1), target)
        elif task == "regression":
            metric.update(logits[:, 0].float(), target.float())
        else:
            metric.update(logits.argmax(dim=1), target)
    return float(metric.compute())


# ---------------------------------------------------------------------------------------------
# design matrices


def _pixel_samples(
    maps: torch.Tensor, masks: torch.Tensor, per_image: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``per_image`` labelled pixels per image: features of the map upsampled to the mask grid
    (bilinear, sampled exactly where ``F.interpolate`` would put them) and their classes."""
    generator = torch.Generator().manual_seed(seed)
    height, width = masks.shape[-2:]
    rows, labels = [], []
    for i in range(maps.shape[0]):
        valid = (masks[i] != IGNORE_INDEX).flatten().nonzero().squeeze(1)
        if valid.numel() == 0:
            continue
        pick = valid[torch.randperm(valid.numel(), generator=generator)[:per_image]]
        ys, xs = pick // width, pick % width
        grid = torch.stack([(xs + 0.5) / width * 2 - 1, (ys + 0.5) / height * 2 - 1], dim=-1).float()
        sampled = F.grid_sample(
            maps[i : i + 1].float(),
            grid.view(1, 1, -1, 2),
            mode="bilinear",
            padding_mode="border",
            align_corners=False,
        )  # [1, D, 1, P]
        rows.append(sampled[0, :, 0].T)
        labels.append(masks[i].flatten()[pick])
    return torch.cat(rows), torch.cat(labels)


def _design(
    task: TaskName, x: torch.Tensor, y: torch.Tensor, pixels_per_image: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    if task == "segmentation":
        return _pixel_samples(x, y, pixels_per_image, seed)
    return x.flatten(1), y


def _standardize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.to(torch.float64)
    return x.mean(dim=0), x.std(dim=0, unbiased=False).clamp_min(1e-6)


# ---------------------------------------------------------------------------------------------
# closed form


def _fit_ridge(
    task: TaskName,
    x: torch.Tensor,
    y: torch.Tensor,
    select: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    alphas: Sequence[float],
) -> ProbeFit:
    mean, std = _standardize(x)
    z = (x.to(torch.float64) - mean) / std
    if task == "regression":
        targets = y.to(torch.float64)[:, None]
    else:
        targets = F.one_hot(y, num_classes).to(torch.float64)
    target_mean = targets.mean(dim=0)
    u, s, vh = torch.linalg.svd(z, full_matrices=False)
    projected = u.T @ (targets - target_mean)
    best: ProbeFit | None = None
    n = z.shape[0]
    for alpha in alphas:  # penalties are relative to the sample count (standardized features)
        weight = vh.T @ ((s / (s.square() + alpha * n))[:, None] * projected)
        readout = Readout(mean, std, weight, target_mean)
        value = score_readout(readout, task, *select, num_classes)
        if best is None or _better(value, best.select_score):
            best = ProbeFit(readout, value, f"alpha={alpha:g}")
    assert best is not None
    return best


def _better(value: float, than: float) -> bool:
    return not math.isnan(value) and (math.isnan(than) or value > than)


def _fit_logistic(
    task: TaskName,
    x: torch.Tensor,
    y: torch.Tensor,
    select: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    cs: Sequence[float],
    seed: int,
) -> ProbeFit:
    mean, std = _standardize(x)
    z = ((x.to(torch.float64) - mean) / std).numpy()
    labels = y.numpy()
    best: ProbeFit | None = None
    model = LogisticRegression(max_iter=300, random_state=seed, warm_start=True)
    for c in sorted(cs):  # weakest penalty last: each fit starts from the previous solution
        model.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(z, labels)
        weight = torch.zeros(z.shape[1], num_classes, dtype=torch.float64)
        bias = torch.full((num_classes,), -torch.inf, dtype=torch.float64)  # classes absent from training
        coef, intercept = torch.from_numpy(model.coef_), torch.from_numpy(model.intercept_)
        classes = torch.as_tensor(model.classes_)
        if len(classes) == 2:  # binary: sklearn keeps one weight vector for the second class
            coef, intercept = (
                torch.cat([torch.zeros_like(coef), coef]),
                torch.cat([torch.zeros_like(intercept), intercept]),
            )
        weight[:, classes] = coef.T.to(torch.float64)
        bias[classes] = intercept.to(torch.float64)
        readout = Readout(mean, std, weight, bias)
        value = score_readout(readout, task, *select, num_classes)
        if best is None or _better(value, best.select_score):
            best = ProbeFit(readout, value, f"C={c:g}")
    assert best is not None
    return best


# ---------------------------------------------------------------------------------------------
# trained linear probe


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """Shuffled index batches; a last batch of one sample joins the previous (BatchNorm needs two)."""
    order = torch.randperm(n, generator=generator)
    batches = list(order.split(batch_size))
    if len(batches) > 1 and batches[-1].numel() == 1:
        batches[-2] = torch.cat([batches[-2], batches.pop()])
    return batches


def _fit_linear(
    task: TaskName,
    x: torch.Tensor,
    y: torch.Tensor,
    select: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    config: LinearProbeConfig,
    seed: int,
    temporal: TemporalSettings | None = None,
) -> ProbeFit:
    # Features are cached in memory and the probe is a single linear layer: a plain loop of a few
    # hundred steps. Lightning's Trainer set-up would cost more than the training of such a probe.
    frames = int(x.shape[1]) if temporal is not None else 0  # per-frame features [N, T, D(, h, w)]
    spatial = x.ndim == (5 if frames else 4)
    dim = x.shape[2] if frames else x.shape[1]
    outputs = 1 if task == "regression" else num_classes
    x = x.float()
    if task == "regression":
        y_mean, y_std = float(y.float().mean()), float(y.float().std(unbiased=False)) or 1.0
        y_train = (y.float() - y_mean) / y_std
    else:
        y_train = y
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        norm: nn.BatchNorm1d | nn.BatchNorm2d = (
            nn.BatchNorm2d(dim, affine=False) if spatial else nn.BatchNorm1d(dim, affine=False)
        )
        head: nn.Conv2d | nn.Linear = nn.Conv2d(dim, outputs, 1) if spatial else nn.Linear(dim, outputs)
        nn.init.trunc_normal_(head.weight, std=0.01)  # MAE's probe init
        assert head.bias is not None  # built with bias=True
        nn.init.zeros_(head.bias)
        probe = nn.Sequential(norm, head)
        aggregator = LTAE(dim, frames, temporal.heads, temporal.key_dim) if temporal is not None else None
    params = list(head.parameters()) + (list(aggregator.parameters()) if aggregator is not None else [])
    lr = config.lr
    if task == "regression" and config.optimizer == "sgd":
        # The squared loss on D standardized features has curvature up to D (correlated features), so
        # SGD diverges above lr ~ 2/D; cross-entropy's bounded gradients tolerate the usual 0.1.
        lr = config.lr / dim
    if config.optimizer == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            params, lr=lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    else:
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = len(_batches(x.shape[0], config.batch_size, torch.Generator().manual_seed(0)))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(config.epochs * steps_per_epoch, 1))
    probe.train()
    for _ in range(config.epochs):
        for idx in _batches(x.shape[0], config.batch_size, generator):
            logits = probe(x[idx] if aggregator is None else aggregate(x[idx], aggregator))
            target = y_train[idx]
            if task == "segmentation":
                logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
                loss = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
            elif task == "regression":
                loss = F.mse_loss(logits[:, 0], target)
            else:
                loss = F.cross_entropy(logits, target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    weight = head.weight.detach().to(torch.float64).reshape(outputs, dim).T
    assert head.bias is not None and norm.running_mean is not None and norm.running_var is not None
    bias = head.bias.detach().to(torch.float64)
    if task == "regression":
        weight, bias = weight * y_std, bias * y_std + y_mean
    mean = norm.running_mean.detach().to(torch.float64)
    var = norm.running_var.detach().to(torch.float64)
    std = torch.sqrt(var + norm.eps)
    weight[var < 1e-8] = 0.0  # channels constant in training (dead units) carry nothing; ignore them later
    linear_readout = Readout(mean, std, weight, bias)
    readout: Readout | TemporalReadout = linear_readout
    if aggregator is not None:
        readout = TemporalReadout(aggregator.eval(), linear_readout)
    return ProbeFit(readout, score_readout(readout, task, *select, num_classes), "ltae" if aggregator else "")


def fit_probe(
    method: ProbeMethod,
    task: TaskName,
    train: tuple[torch.Tensor, torch.Tensor],
    select: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    seed: int = 0,
    linear: LinearProbeConfig | None = None,
    ridge_alphas: Sequence[float] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0),
    logistic_cs: Sequence[float] = (0.01, 0.1, 1.0, 10.0),
    pixels_per_image: int = 256,
) -> ProbeFit:
    """Fit a ``method`` probe on ``train`` features/targets; hyper-parameters are chosen on ``select``."""
    with single_thread():
        if method == "linear":
            return _fit_linear(task, *train, select, num_classes, linear or LinearProbeConfig(), seed)
        x, y = _design(task, *train, pixels_per_image, seed)
        if method == "ridge":
            return _fit_ridge(task, x, y, select, num_classes, ridge_alphas)
        if task == "regression":
            raise ValueError("the logistic probe is for classification and segmentation; use ridge or linear")
        return _fit_logistic(task, x, y, select, num_classes, logistic_cs, seed)


def fit_ltae_probe(
    task: TaskName,
    train: tuple[torch.Tensor, torch.Tensor],
    select: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    temporal: TemporalSettings,
    seed: int = 0,
    linear: LinearProbeConfig | None = None,
) -> ProbeFit:
    """The ``linear`` probe on per-frame features ``[N, T, D]`` / ``[N, T, D, h, w]`` with an L-TAE in
    front, both trained together (the closed-form probes have no gradient to train an L-TAE with)."""
    with single_thread():
        return _fit_linear(task, *train, select, num_classes, linear or LinearProbeConfig(), seed, temporal)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run small-matrix work on one thread (torch intra-op, OpenMP and BLAS pools). Probes are
    thousands of tiny ops; on a busy machine thread-pool synchronisation made them 10-200x slower
    (measured under load: a linear probe on 84x192 features 10.4 s with 2 threads, 0.05 s with
    one; a logistic probe 1.08 s vs 0.14 s)."""
    with torch_threads(1), threadpool_limits(limits=1):
        yield
