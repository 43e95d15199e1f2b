"""``geosane train``: fit the autoencoder with Lightning, checkpoint, resume, export.

Run directory (``train.out``)::

    OUT/config.yaml                      the config actually run
    OUT/checkpoints/step-0000200.ckpt    Lightning checkpoints (model, optimizer, scheduler, loops, RNG)
    OUT/logs/metrics.csv                 train/loss, train/rec, train/con, train/lr per step; val/r2, val/rec
    OUT/tensorboard/                     the same for TensorBoard (when installed)
    OUT/autoencoder.safetensors          the trained weights (+ model config and tokenizer settings as JSON metadata)
    OUT/summary.json                     split, steps, held-out reconstruction R^2, timings

Everything a run could reject (store, window, token size, resume/init checkpoints, an existing run
in ``OUT``) is checked before anything is written.
"""

from __future__ import annotations

import csv
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from geosane.autoencoder.config import AutoencoderConfig
from geosane.autoencoder.data import TokenWindowDataModule, token_scale
from geosane.autoencoder.evaluate import reconstruction_metrics
from geosane.autoencoder.io import load_autoencoder, save_autoencoder
from geosane.autoencoder.module import CHECKPOINT_FORMAT, AutoencoderModule
from geosane.config import flatten_dotted, save_config, to_dict
from geosane.console import console
from geosane.errors import ConfigError, GeosaneError, cli_flags
from geosane.io import check_out_dir, load_torch, mark_out_dir, write_json
from geosane.runs import SafeCheckpointIO, fit_resumable, keeps_torch_threads, quiet_lightning

__all__ = [
    "RESUMABLE_KEYS",
    "TrainResult",
    "checkpoints",
    "read_metrics",
    "resolve_precision",
    "resolve_strategy",
    "train",
]

# keys that may differ between a checkpoint's config and the config resuming it
RESUMABLE_KEYS = frozenset(
    {
        "train.ckpt_every",
        "train.keep_checkpoints",
        "train.val_every",
        "train.log_every",
        "train.progress",
        "train.compile",
        "train.threads",
        "data.num_workers",
        "data.permuted_cache",
    }
)


@dataclass
class TrainResult:
    """Where the run wrote its outputs and what it measured."""

    out: Path
    export: Path
    steps: int
    summary: dict[str, Any] = field(default_factory=dict)


class StepCheckpoint(Callback):
    """Save ``step-XXXXXXX.ckpt`` every ``every`` optimizer steps and at the end; keep the newest ``keep``."""

    def __init__(self, directory: Path, every: int, keep: int) -> None:
        self.directory, self.every, self.keep = directory, every, keep

    def _save(self, trainer: L.Trainer) -> None:
        step = trainer.global_step
        path = self.directory / f"step-{step:07d}.ckpt"
        # every rank must take the same branch: saving is collective (FSDP gathers, all ranks barrier)
        if trainer.strategy.broadcast(path.exists(), src=0):
            return
        trainer.save_checkpoint(path)
        if trainer.is_global_zero and self.keep > 0:
            for old in checkpoints(self.directory)[: -self.keep]:
                old.unlink(missing_ok=True)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step = trainer.global_step
        if step > 0 and step % self.every == 0 and not trainer.fit_loop._should_accumulate():
            self._save(trainer)

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        self._save(trainer)


def checkpoints(directory: Path) -> list[Path]:
    """Checkpoints of a run, oldest first."""
    return sorted(directory.glob("step-*.ckpt")) if directory.is_dir() else []


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto``: bf16-mixed on GPUs that support it, 16-mixed on older GPUs, 32-true on CPU.

    On CPU bf16 autocast was *slower* than float32 for the small preset on the machine we measured
    (see docs/autoencoder.md), so it is not the default there; ask for it with precision=bf16-mixed.
    """
    if precision != "auto":
        return precision
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def resolve_strategy(name: str, unused_parameters: bool = False, accelerator: str = "auto") -> Any:
    """A Lightning strategy from ``train.strategy``; ``fsdp`` shards per transformer block.

    Lightning's plain ``"fsdp"`` wraps only the root module, which gathers every parameter at once;
    wrapping each :class:`~geosane.autoencoder.model.Block` lets FSDP gather one block at a time.
    ``unused_parameters``: some parameters get no gradient (the contrastive projection head when
    ``loss.gamma=0``); DDP must then look for them or it fails at the second step.
    Other names (``auto``, ``deepspeed_stage_2``, ...) go to Lightning unchanged.
    """
    if name == "ddp" and unused_parameters:
        from lightning.pytorch.strategies import DDPStrategy

        return DDPStrategy(find_unused_parameters=True)
    if name != "fsdp":
        return name
    if accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available()):
        # Lightning's FSDPStrategy refuses CPU with a traceback; say it in one line instead
        raise ConfigError(
            "train.strategy=fsdp needs GPUs (Lightning's FSDP does not run on CPU); "
            "use train.strategy=ddp to train on several CPU processes"
        )
    from lightning.pytorch.strategies import FSDPStrategy

    from geosane.autoencoder.model import Block

    return FSDPStrategy(auto_wrap_policy={Block}, state_dict_type="full")


def _config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    a, b = flatten_dotted(old), flatten_dotted(new)
    keys = sorted(set(a) | set(b))
    return [k for k in keys if k not in RESUMABLE_KEYS and a.get(k) != b.get(k)]


def _load_checkpoint(path: Path) -> dict[str, Any]:
    data = load_torch(path)  # a truncated file or an unsafe pickle: one line, nothing run
    if not isinstance(data, dict) or (data.get("geosane") or {}).get("format") != CHECKPOINT_FORMAT:
        raise GeosaneError(f"{path} is not a geosane autoencoder training checkpoint")
    return data


def _check_resume(config: AutoencoderConfig, ckpt_path: Path) -> dict[str, Any]:
    data = _load_checkpoint(ckpt_path)
    stored = data["geosane"]["config"]
    differences = _config_differences(stored, config.to_dict())
    if differences:
        old, new = flatten_dotted(stored), flatten_dotted(config.to_dict())
        shown = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in differences[:4])
        more = f" (and {len(differences) - 4} more)" if len(differences) > 4 else ""
        raise ConfigError(
            f"cannot resume from {ckpt_path}: it was trained with another config ({shown}{more}); "
            "resume with the same config or start a new run in another train.out"
        )
    return data


def _prepare_csv_for_resume(path: Path, step: int) -> list[dict[str, str]]:
    """Rows of an earlier session's metrics.csv up to ``step`` (later rows are replayed by the resume)."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return [r for r in rows if r.get("step", "") != "" and int(float(r["step"])) < step]


def _loggers(out: Path, previous_rows: list[dict[str, str]]) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger

    logging.getLogger("lightning.fabric.loggers.csv_logs").setLevel(logging.ERROR)
    csv_logger = CSVLogger(out, name="", version="logs", flush_logs_every_n_steps=50)
    if previous_rows:
        writer = csv_logger.experiment  # creating it clears the old file; replay its rows first
        writer.metrics.extend({k: v for k, v in row.items() if v != ""} for row in previous_rows)
    loggers: list[Any] = [csv_logger]
    try:
        import tensorboard  # noqa: F401
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(out, name="", version="tensorboard", default_hp_metric=False))
    except ImportError:
        pass
    return loggers


def _progress_bar() -> Callback:
    from lightning.pytorch.callbacks import RichProgressBar

    class StepProgressBar(RichProgressBar):
        """Lightning's Rich bar, labelled for a step-based run (max_epochs is -1: no "Epoch 0/-2")."""

        def _get_train_description(self, current_epoch: int) -> str:
            return "training"

        @property
        def total_train_batches(self) -> int | float:
            # the run is one epoch of max_steps * accumulate micro-batches, and the bar shows
            # batch_idx + 1, which a resume restores; Lightning's default (the steps *remaining*)
            # made a resumed bar read "8/3"
            trainer = self.trainer
            return trainer.max_steps * trainer.accumulate_grad_batches

        def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
            metrics = super().get_metrics(trainer, pl_module)
            metrics.pop("v_num", None)  # the logger version means nothing to a user here
            return metrics

    return StepProgressBar(console_kwargs={"stderr": True})


@keeps_torch_threads
def train(config: AutoencoderConfig, resume: bool = False, callbacks: Sequence[Callback] = ()) -> TrainResult:
    """Train (or resume, or fine-tune with ``train.init_from``) the autoencoder described by ``config``.

    ``callbacks`` are extra Lightning callbacks (e.g. early stopping, custom logging).
    """
    quiet_lightning()
    cfg = config
    out = Path(cfg.train.out).expanduser()
    ckpt_dir = out / "checkpoints"
    # ---- validate everything before writing anything
    datamodule = TokenWindowDataModule(cfg)  # checks the store: exists, d_t, window
    cfg = datamodule.config  # model.d_t is the store's token size from here on
    check_out_dir(out, "train", {"data.store": cfg.data.store, "train.init_from": cfg.train.init_from})
    existing = checkpoints(ckpt_dir)
    resume_path: Path | None = None
    start_step = 0
    if resume:
        if not existing:
            raise GeosaneError(f"nothing to resume: {ckpt_dir} holds no checkpoints")
        resume_path = existing[-1]
        start_step = int(_check_resume(cfg, resume_path)["global_step"])
        if start_step >= cfg.train.max_steps:
            console.print(f"{resume_path.name}: already at step {start_step} of {cfg.train.max_steps}")
    elif existing:
        raise GeosaneError(
            f"{out} already holds a training run ({existing[-1].name}); pass resume=True to continue it "
            "or choose another train.out",
            flags=cli_flags("resume"),
        )
    init_state = None
    if cfg.train.init_from is not None and resume_path is None:
        source, _ = load_autoencoder(cfg.train.init_from)
        if to_dict(source.config) != to_dict(cfg.model):
            differing = [k for k, v in to_dict(cfg.model).items() if to_dict(source.config).get(k) != v]
            raise ConfigError(
                f"train.init_from={cfg.train.init_from} has another model config "
                f"(differs in {', '.join('model.' + k for k in differing)}); use the same model section"
            )
        init_state = source.state_dict()
    datamodule.start_step = start_step
    # ---- run
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    module = AutoencoderModule(cfg)
    if init_state is not None:
        module.model.load_state_dict(init_state)  # keeps the pre-trained token scale
    elif resume_path is None:
        module.model.token_scale.fill_(token_scale(datamodule.store, datamodule.train_ids))
    previous_rows = _prepare_csv_for_resume(out / "logs" / "metrics.csv", start_step) if resume_path else []
    all_callbacks: list[Callback] = [
        StepCheckpoint(ckpt_dir, cfg.train.ckpt_every, cfg.train.keep_checkpoints),
        *callbacks,
    ]
    if cfg.train.progress:
        all_callbacks.append(_progress_bar())
    accelerator = cfg.train.accelerator
    strategy = resolve_strategy(
        cfg.train.strategy, unused_parameters=cfg.loss.gamma == 0, accelerator=accelerator
    )
    trainer = L.Trainer(
        max_steps=cfg.train.max_steps,
        max_epochs=-1,
        accelerator=accelerator,
        devices=cfg.train.devices,
        num_nodes=cfg.train.num_nodes,
        strategy=strategy,
        precision=resolve_precision(cfg.train.precision, accelerator),  # type: ignore[arg-type]
        accumulate_grad_batches=cfg.train.accumulate,
        gradient_clip_val=cfg.train.clip_grad_norm,
        gradient_clip_algorithm="norm",
        logger=_loggers(out, previous_rows),
        callbacks=all_callbacks,
        plugins=[SafeCheckpointIO()],
        enable_checkpointing=False,
        enable_progress_bar=cfg.train.progress,
        enable_model_summary=False,
        val_check_interval=cfg.train.val_every * cfg.train.accumulate,
        limit_val_batches=1.0 if datamodule.val_ids else 0,
        check_val_every_n_epoch=None,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.train.log_every,
        use_distributed_sampler=False,
        default_root_dir=out,
    )
    if trainer.is_global_zero:  # with DDP every rank runs this function; one writes
        mark_out_dir(out, "train")
        save_config(cfg, out / "config.yaml")
    started = time.perf_counter()
    fit_resumable(
        trainer, module, datamodule=datamodule, ckpt_path=resume_path, weights_only=True,
        resume_hint=f"checkpoints are in {ckpt_dir}; rerun with resume=True to continue",
        resume_flags={"rerun with resume=True": "rerun the same command with --resume"},
    )  # fmt: skip
    seconds = time.perf_counter() - started
    export = out / "autoencoder.safetensors"
    summary: dict[str, Any] = {
        **datamodule.describe(),
        "steps": trainer.global_step,
        "resumed_from_step": start_step if resume_path else None,
        "init_from": str(cfg.train.init_from) if cfg.train.init_from else None,
        "seconds": seconds,
        "parameters": module.model.num_parameters(),
    }
    if trainer.is_global_zero:
        # the tokenizer settings travel with the weights: generation re-tokenizes prompts with them
        save_autoencoder(module.model, export, extra={"steps": str(trainer.global_step)},
                         tokenizer=datamodule.store.tokenizer)  # fmt: skip
        model = module.model.float().eval()
        if datamodule.val_ids:
            summary["val"] = reconstruction_metrics(model, datamodule.store, datamodule.val_ids)
        summary["train"] = reconstruction_metrics(model, datamodule.store, datamodule.train_ids[:8])
        write_json(out / "summary.json", summary)
    return TrainResult(out=out, export=export, steps=trainer.global_step, summary=summary)


def read_metrics(out: str | Path) -> list[dict[str, float]]:
    """The rows of ``OUT/logs/metrics.csv`` as floats (empty cells dropped)."""
    path = Path(out) / "logs" / "metrics.csv"
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]
