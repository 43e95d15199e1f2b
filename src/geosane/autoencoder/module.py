"""The Lightning module: views, losses, optimizer, schedule, exact resume.

Two views of each window (noise, optionally a permuted copy of the model as the second view) go
through the autoencoder in one batch; the loss is ``gamma * NT-Xent + (1 - gamma) *
reconstruction`` (each view reconstructs its own clean tokens). All training randomness (noise and
dropout) is derived from the samples' stream indices, so it does not depend on how often the
global RNG was used before; the global RNG states are saved in checkpoints and restored as well.

Defects of the reference implementation avoided here: the OneCycle schedule is stepped by
Lightning after every optimizer step (``interval="step"``) and logged (``train/lr``); gradient
accumulation is Lightning's (gradients are zeroed only after ``accumulate`` micro-batches); the
optimizer and scheduler states are in every checkpoint.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, cast

import lightning as L
import numpy as np
import torch
import torchmetrics
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

from geosane.autoencoder.config import AutoencoderConfig
from geosane.autoencoder.data import _mix
from geosane.autoencoder.losses import noisy_view, nt_xent, reconstruction_loss
from geosane.autoencoder.model import WeightAutoencoder

__all__ = ["CHECKPOINT_FORMAT", "AutoencoderModule", "make_optimizer", "rng_state", "set_rng_state"]

CHECKPOINT_FORMAT = "geosane-autoencoder-checkpoint"


def rng_state() -> dict[str, Any]:
    """Global RNG states (torch CPU/CUDA, numpy, random) as tensors and plain Python values."""
    # the legacy tuple for the global MT19937 (numpy's stub also allows the dict form)
    _, keys, pos, has_gauss, cached = cast("tuple[str, np.ndarray[Any, Any], int, int, float]", np.random.get_state())
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "random": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    r = state["random"]
    random.setstate((r["version"], tuple(r["internal"]), r["gauss_next"]))


# prefixes FSDP and activation checkpointing insert into parameter names when they wrap modules
_WRAPPER_PREFIXES = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def _plain_name(name: str) -> str:
    for prefix in _WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def make_optimizer(
    model: torch.nn.Module, config: AutoencoderConfig, decay: set[str] | None = None
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.OneCycleLR]:
    """AdamW (weight decay on >= 2-D parameters only) and a per-step OneCycleLR.

    ``decay`` names the parameters to decay, recorded before any wrapping: FSDP hands the optimizer
    flattened 1-D shards, whose shape no longer tells a matrix from a bias. Default: ``ndim >= 2``.
    """
    train = config.train
    named = [(_plain_name(n), p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    decayed = {n for n, p in named if p.ndim >= 2} if decay is None else decay
    groups = [
        {"params": [p for n, p in named if n in decayed], "weight_decay": train.weight_decay},
        {"params": [p for n, p in named if n not in decayed], "weight_decay": 0.0},
    ]
    kwargs: dict[str, Any] = {}
    choice = train.fused_optimizer
    if choice == "auto":
        choice = "fused" if params and params[0].is_cuda else "foreach"
    if choice == "fused":
        kwargs["fused"] = True
    elif choice == "foreach":
        kwargs["foreach"] = True
    else:  # "loop": the plain per-parameter implementation
        kwargs["foreach"] = False
    optimizer = torch.optim.AdamW(groups, lr=train.lr, betas=tuple(train.betas), **kwargs)  # type: ignore[arg-type]
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=train.lr,
        total_steps=train.max_steps,
        pct_start=train.pct_start,
        anneal_strategy="cos",
        div_factor=train.div_factor,
        final_div_factor=train.final_div_factor,
        cycle_momentum=False,  # keep the configured AdamW betas
    )
    return optimizer, scheduler


class AutoencoderModule(L.LightningModule):
    """Trains a :class:`WeightAutoencoder` on window batches (``docs/architecture.md`` item format)."""

    _forward: Callable[..., tuple[torch.Tensor, torch.Tensor]]  # self.model, or its compiled wrapper

    def __init__(self, config: AutoencoderConfig) -> None:
        super().__init__()
        self.config = config
        self.model = WeightAutoencoder(config.model)
        self.decay = {n for n, p in self.model.named_parameters() if p.ndim >= 2}  # before any FSDP wrapping
        # not registered as a submodule: the compiled wrapper shares ``self.model``'s parameters
        object.__setattr__(self, "_forward", torch.compile(self.model) if config.train.compile else self.model)
        self.val_r2 = torchmetrics.R2Score()
        self.val_rec = torchmetrics.MeanMetric()
        self._step_parts: list[torch.Tensor] = []

    # ------------------------------------------------------------------ losses
    def _generator(self, sample: torch.Tensor, salt: int) -> torch.Generator:
        seed = _mix(self.config.train.seed, int(sample.reshape(-1)[0]), salt)
        return torch.Generator(device=self.device).manual_seed(seed)

    def compute_loss(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Total, reconstruction and contrastive loss of a training batch."""
        cfg = self.config
        mask, valid = batch["mask"], batch["valid"]
        clean_a = batch["tokens"] * mask
        mask_b = batch.get("mask_b", mask)
        clean_b = batch["tokens_b"] * mask_b if "tokens_b" in batch else clean_a
        contrastive = cfg.loss.gamma > 0
        sample = batch.get("sample", torch.zeros(1, dtype=torch.long))
        noise = self._generator(sample, 0)
        view_a = noisy_view(clean_a, mask, cfg.loss.multiplicative_noise, cfg.loss.additive_noise, noise)
        if contrastive or "tokens_b" in batch:
            view_b = noisy_view(clean_b, mask_b, cfg.loss.multiplicative_noise, cfg.loss.additive_noise, noise)
            inputs, targets = torch.cat([view_a, view_b]), torch.cat([clean_a, clean_b])
            masks, repeat = torch.cat([mask, mask_b]), 2
        else:
            inputs, targets, masks, repeat = view_a, clean_a, mask, 1
        positions = batch["positions"].repeat(repeat, 1, 1)
        layer_type = batch["layer_type"].repeat(repeat, 1)
        valid_all = valid.repeat(repeat, 1)
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices, device_type=self.device.type):
            torch.manual_seed(_mix(cfg.train.seed, int(sample.reshape(-1)[0]), 1))  # dropout masks
            recon, z = self._forward(inputs, positions, layer_type, valid_all)
            rec = reconstruction_loss(
                recon, targets, masks, valid_all, cfg.loss.normalize, positions[..., 1], cfg.loss.std_floor,
                self.model.token_scale**2,
            )
            if contrastive:
                proj = self.model.project(z, valid_all)
                proj_a, proj_b = proj.float().chunk(2)
                con = nt_xent(proj_a, proj_b, temperature=cfg.loss.temperature)
            else:
                con = rec.new_zeros(())
        loss = cfg.loss.gamma * con + (1.0 - cfg.loss.gamma) * rec
        return {"loss": loss, "rec": rec.detach(), "con": con.detach()}

    # ------------------------------------------------------------------ Lightning hooks
    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        parts = self.compute_loss(batch)
        self._step_parts.append(torch.stack([parts["loss"].detach(), parts["rec"], parts["con"]]))
        if "sample" in batch:  # stream index -> micro-batch index, whatever Lightning's counters say
            micro = int(batch["sample"][0]) // self.config.data.batch_size // max(self.trainer.world_size, 1)
        else:
            micro = batch_idx
        if (micro + 1) % self.config.train.accumulate == 0:  # last micro-batch of this optimizer step
            loss, rec, con = torch.stack(self._step_parts).mean(0)
            self._step_parts.clear()
            lr = self.trainer.optimizers[0].param_groups[0]["lr"]
            self.log_dict(
                {"train/loss": loss, "train/rec": rec, "train/con": con},
                on_step=True, on_epoch=False, prog_bar=False, sync_dist=True,
            )
            self.log("train/lr", lr, on_step=True, on_epoch=False, prog_bar=False)
            self.log("loss", loss, on_step=True, on_epoch=False, prog_bar=True, logger=False)
        return parts["loss"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        mask, valid = batch["mask"], batch["valid"]
        tokens = batch["tokens"] * mask
        recon, _ = self._forward(tokens, batch["positions"], batch["layer_type"], valid)
        rec = reconstruction_loss(
            recon, tokens, mask, valid, self.config.loss.normalize, batch["positions"][..., 1],
            self.config.loss.std_floor, self.model.token_scale**2,
        )
        real = mask & valid[..., None]
        self.val_r2.update(recon[real].float(), tokens[real].float())
        self.val_rec.update(rec, weight=real.sum())
        self.log("val/r2", self.val_r2, on_step=False, on_epoch=True, prog_bar=True)
        self.log("val/rec", self.val_rec, on_step=False, on_epoch=True)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer, scheduler = make_optimizer(self.model, self.config, self.decay)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["geosane"] = {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.to_dict(),
            "rng": rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        extra = checkpoint.get("geosane") or {}
        if "rng" in extra:
            set_rng_state(extra["rng"])
