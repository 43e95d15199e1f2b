"""Baselines for SatDiFuser runs, on the same data, splits and (for the probe) the same cached features.

- :func:`run_probe`: a linear probe (scikit-learn logistic regression on globally pooled,
  standardised features) on every single (timestep, layer) of the frozen UNet; the best on the
  selection split is reported on the test split.
- :func:`run_scratch_baseline`: a small timm CNN trained from scratch with ``geosane.tasks.fit``
  on the same images (same resolution, same splits); the epoch with the best selection accuracy
  is not picked (``fit`` trains a fixed budget), the final model is reported on test.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from geosane.console import console, track
from geosane.difuser.config import DifuseConfig, apply_threads
from geosane.difuser.fusers import feature_key
from geosane.difuser.train import prepare_features
from geosane.errors import GeosaneError
from geosane.io import write_json
from geosane.runs import keeps_torch_threads

__all__ = ["run_probe", "run_scratch_baseline"]


def _pooled_features(cache: Any, count: int) -> dict[str, np.ndarray]:
    """Globally average-pooled features ``{t{timestep}/{layer}: [N, C]}`` of every cached image."""
    rows: dict[str, list[np.ndarray]] = {}
    for i in track(range(count), "pooling cached features", total=count):
        for key, fmap in cache.load(i).items():
            rows.setdefault(key, []).append(fmap.mean(dim=(1, 2)).numpy())
    return {key: np.stack(value) for key, value in rows.items()}


def run_probe(cfg: DifuseConfig, max_iter: int = 2000) -> dict[str, Any]:
    """Linear probe per (timestep, layer); the best on ``select`` is reported on ``test``."""
    if cfg.task.kind != "classification":
        raise GeosaneError("difuse probe supports task.kind classification (one label per image)")
    cache, data, backbone = prepare_features(cfg)
    pooled = _pooled_features(cache, int(data.images.shape[0]))
    labels = data.targets.numpy()
    train, select, test = (data.splits[k] for k in ("train", "select", "test"))
    results: list[dict[str, Any]] = []
    start = time.perf_counter()
    for t in backbone.save_timesteps:
        for layer in backbone.layer_names:
            x = pooled[feature_key(t, layer)]
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=1.0))
            clf.fit(x[train], labels[train])
            results.append(
                {
                    "timestep": t,
                    "layer": layer,
                    "channels": int(x.shape[1]),
                    "select_accuracy": float(clf.score(x[select], labels[select])),
                    "test_accuracy": float(clf.score(x[test], labels[test])),
                }
            )
    best = max(results, key=lambda r: (r["select_accuracy"], -r["timestep"]))
    report = {
        "baseline": "linear probe on the single best (timestep, layer), chosen on select",
        "best": best,
        "test_accuracy": best["test_accuracy"],
        "probe_seconds": round(time.perf_counter() - start, 1),
        "all": results,
        "feature_cache": str(cache.directory),
    }
    out = Path(cfg.output_dir).expanduser()
    write_json(out / "probe.json", report)
    console.print(
        f"linear probe: best {best['layer']} at t={best['timestep']} (select {best['select_accuracy']:.4f}) "
        f"-> test accuracy {best['test_accuracy']:.4f}"
    )
    return report


@keeps_torch_threads
def run_scratch_baseline(cfg: DifuseConfig, arch: str = "resnet10t", epochs: int = 30) -> dict[str, Any]:
    """A randomly initialised timm CNN trained on the task's train split (images as fed to the UNet)."""
    from geosane.data import Normalization, TensorImageDataset
    from geosane.difuser.data import load_task_data
    from geosane.tasks import FitConfig, build_classifier, evaluate, fit
    from geosane.zoo import ArchSpec

    if cfg.task.kind != "classification":
        raise GeosaneError("difuse scratch supports task.kind classification")
    apply_threads(cfg.num_threads)
    data = load_task_data(cfg.task, cfg.backbone.image_size)
    identity = Normalization((0.0,) * data.images.shape[1], (1.0,) * data.images.shape[1])

    def dataset(split: str, augment: bool) -> TensorImageDataset:
        idx = torch.as_tensor(data.splits[split])
        return TensorImageDataset(data.images[idx], data.targets[idx], identity, augment=augment)

    model = build_classifier(ArchSpec("timm", arch, {}), data.num_classes, in_chans=int(data.images.shape[1]))
    fit_config = FitConfig(epochs=epochs, batch_size=cfg.train.batch_size, lr=2e-3, weight_decay=0.05,
                           warmup_epochs=1.0, seed=cfg.train.seed, progress=cfg.train.progress)
    start = time.perf_counter()
    result = fit(model, "classification", data.num_classes, dataset("train", True), dataset("select", False), fit_config)
    seconds = time.perf_counter() - start
    test = evaluate(model, "classification", data.num_classes, dataset("test", False))["accuracy"]
    report = {
        "baseline": f"{arch} from scratch ({epochs} epochs, AdamW 2e-3, flips/rot90)",
        "image_size": cfg.backbone.image_size,
        "num_params": sum(p.numel() for p in model.parameters()),
        "select_accuracy": result.final.get("accuracy"),
        "test_accuracy": test,
        "train_seconds": round(seconds, 1),
        "history": result.history,
    }
    write_json(Path(cfg.output_dir).expanduser() / "scratch.json", report)
    console.print(f"{arch} from scratch: test accuracy {test:.4f} ({seconds:.0f}s)")
    return report
