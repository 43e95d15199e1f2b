"""Train a small pixel-space DDPM (diffusers ``UNet2DModel``) on unlabeled images, offline.

The result is a diffusers model directory (``model_index.json``, ``unet/`` safetensors,
``scheduler/``) that :class:`geosane.difuser.DiffusionBackbone` loads exactly like a real
DiffusionSat / Stable Diffusion checkpoint directory. Training is a Lightning loop with an EMA copy
of the UNet (``torch.optim.swa_utils.AveragedModel``); checkpoints (``checkpoints/last.ckpt``) are
written atomically every ``checkpoint_every`` steps and ``resume=True`` continues from the last one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig
from torch import nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Dataset

from geosane.config import save_config, to_dict
from geosane.console import console, make_progress
from geosane.difuser.config import PretrainConfig, apply_threads
from geosane.difuser.data import load_training_images
from geosane.errors import GeosaneError, cli_flags
from geosane.io import atomic_directory, atomic_path, write_json
from geosane.runs import (
    SafeCheckpointIO,
    SaveLastCheckpoint,
    fit_resumable,
    keeps_torch_threads,
    quiet_lightning,
)

__all__ = ["PretrainResult", "build_ddpm_unet", "ema_with_warmup", "pretrain_ddpm"]


@dataclass
class PretrainResult:
    """Where the diffusers directory went, steps trained, wall time and the final mean loss."""

    model_dir: Path
    steps: int
    seconds: float
    final_loss: float
    num_images: int


def build_ddpm_unet(config: PretrainConfig) -> nn.Module:
    """A diffusers ``UNet2DModel`` shaped by ``config`` (attention at ``attention_levels``)."""
    from diffusers import UNet2DModel

    levels = len(config.block_out_channels)
    down = tuple("AttnDownBlock2D" if i in config.attention_levels else "DownBlock2D" for i in range(levels))
    up = tuple(reversed(["AttnUpBlock2D" if i in config.attention_levels else "UpBlock2D" for i in range(levels)]))
    return UNet2DModel(  # type: ignore[return-value]  # diffusers' types lose ModelMixin's nn.Module base
        sample_size=config.image_size,
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(config.block_out_channels),
        layers_per_block=config.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=config.norm_num_groups,
        attention_head_dim=config.attention_head_dim,
    )


def _noise_scheduler(config: PretrainConfig) -> Any:
    from diffusers import DDPMScheduler

    # steps_offset=1 and "leading" spacing as in Stable Diffusion / DiffusionSat scheduler configs
    return DDPMScheduler(
        num_train_timesteps=config.num_train_timesteps,
        beta_schedule=config.beta_schedule,
        steps_offset=1,
        timestep_spacing="leading",
        clip_sample=True,
    )


def ema_with_warmup(decay: float) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor | int], torch.Tensor]:
    """EMA update for ``AveragedModel`` with decay ``min(decay, (1 + n) / (10 + n))`` after n updates.

    The ramp (as in diffusers' ``EMAModel``) keeps a short run's average from being dominated by
    the random initial weights: with a fixed 0.999 decay, 1000 steps still weigh them by ~37%.
    """

    def update(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor | int) -> torch.Tensor:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        return averaged * d + current * (1.0 - d)

    return update


class _Images(Dataset[torch.Tensor]):
    """Images in [-1, 1] with random flips and 90-degree rotations (overhead imagery)."""

    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> torch.Tensor:
        x = self.images[index]
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        return torch.rot90(x, int(torch.randint(0, 4, ())), dims=(-2, -1)).contiguous()


class DDPMModule(L.LightningModule):
    """Epsilon-prediction DDPM loss on a UNet2DModel, with an EMA copy updated every step."""

    def __init__(self, unet: nn.Module, config: PretrainConfig) -> None:
        super().__init__()
        self.unet = unet
        self.ema = AveragedModel(unet, avg_fn=ema_with_warmup(config.ema_decay), use_buffers=True)
        self.config = config
        self.noise_scheduler = _noise_scheduler(config)
        self.losses: list[float] = []

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        noise = torch.randn_like(batch)
        t = torch.randint(0, self.config.num_train_timesteps, (batch.shape[0],), device=batch.device)
        noisy = self.noise_scheduler.add_noise(batch, noise, t)
        loss = F.mse_loss(self.unet(noisy, t).sample, noise)
        self.losses.append(float(loss.detach()))
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.ema.update_parameters(self.unet)

    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        optimizer = torch.optim.AdamW(self.unet.parameters(), lr=self.config.lr, weight_decay=0.0)
        warmup, total = self.config.warmup_steps, self.config.steps

        def schedule(step: int) -> float:  # linear warm-up, then cosine to 10%
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min((step - warmup) / max(total - warmup, 1), 1.0)
            return 0.1 + 0.45 * (1.0 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class _StepProgress(Callback):
    """A Rich progress bar over optimizer steps, showing the running loss."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.progress = make_progress()
        self.task: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.progress.start()
        self.task = self.progress.add_task(
            "DDPM pretraining", total=self.total, completed=trainer.global_step, status=""
        )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: Any, *args: Any) -> None:
        recent = pl_module.losses[-50:]
        status = f"loss {sum(recent) / max(len(recent), 1):.4f}"
        self.progress.update(self.task, completed=trainer.global_step, status=status)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.progress.stop()


def _save_samples(unet: nn.Module, config: PretrainConfig, path: Path) -> None:
    """A PNG grid of ``num_samples`` images drawn with 50 DDIM steps from the EMA UNet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(_noise_scheduler(config).config)
    scheduler.set_timesteps(50)
    g = torch.Generator().manual_seed(config.seed)
    size = config.image_size
    x = torch.randn(config.num_samples, 3, size, size, generator=g)
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(unet(x, t).sample, t, x).prev_sample
    images = ((x.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).numpy()
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img in zip(axes.flat, images, strict=False):
        ax.imshow(img)
    fig.suptitle("DDPM samples (EMA UNet, 50 DDIM steps)", fontsize=9)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)


@keeps_torch_threads
def pretrain_ddpm(config: PretrainConfig, resume: bool = False) -> PretrainResult:
    """Train the DDPM of ``config``; write the diffusers directory to ``config.output_dir / 'model'``.

    With ``resume=True`` training continues from ``output_dir/checkpoints/last.ckpt`` (step count,
    optimizer, LR schedule, EMA and RNG-independent data order all restored by Lightning).
    """
    apply_threads(config.num_threads)
    from diffusers import DDPMPipeline

    if config.data_root is None:
        raise GeosaneError("data_root is not set (an image folder of unlabeled training images)")
    out = Path(config.output_dir).expanduser()
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume and not last.is_file():
        raise GeosaneError(f"resume=True: no checkpoint at {last}", flags=cli_flags("resume"))
    if not resume and last.is_file():
        raise GeosaneError(
            f"{out} already holds a training run; pass resume=True or choose another output_dir",
            flags=cli_flags("resume"),
        )
    images = load_training_images(
        str(config.data_root), config.image_size, config.split, config.fractions, config.split_seed
    )
    if images.shape[1] != 3:
        raise GeosaneError(f"DDPM pretraining expects RGB images, {config.data_root} has {images.shape[1]} bands")
    console.print(
        f"DDPM pretraining on {images.shape[0]} images ({config.split} split) at {config.image_size}px, "
        f"{config.steps} steps"
    )
    save_config(config, out / "pretrain_config.yaml")

    quiet_lightning()
    L.seed_everything(config.seed, workers=True, verbose=False)
    unet = build_ddpm_unet(config)
    module = DDPMModule(unet, config)
    loader = DataLoader(
        _Images(images),
        batch_size=config.batch_size,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(config.seed),
    )
    checkpoint = SaveLastCheckpoint(last, every_n_train_steps=config.checkpoint_every, on_epoch_end=False)
    trainer = L.Trainer(
        max_steps=config.steps,
        accelerator="cpu" if config.device == "cpu" else "auto",
        devices=1,
        logger=False,
        enable_checkpointing=True,  # our SaveLastCheckpoint is the only Checkpoint callback
        callbacks=[checkpoint, _StepProgress(config.steps)],
        plugins=[SafeCheckpointIO()],
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    # checkpoints fall mid-epoch (quiet_lightning silences Lightning's warning about it); a resumed run
    # reshuffles the images, which is harmless for DDPM training
    start = time.perf_counter()
    fit_resumable(
        trainer, module, loader, ckpt_path=str(last) if resume else None, weights_only=True,
        resume_hint=f"the last checkpoint is {last}; rerun with resume=True to continue",
        resume_flags={"rerun with resume=True": "rerun the same command with --resume"},
    )  # fmt: skip
    seconds = time.perf_counter() - start
    trainer.save_checkpoint(last, weights_only=False)  # full state (optimizer, loops) for --resume

    ema_unet = module.ema.module.eval().cpu()
    model_dir = out / "model"
    with atomic_directory(model_dir) as tmp:
        DDPMPipeline(unet=ema_unet, scheduler=_noise_scheduler(config)).save_pretrained(  # type: ignore[attr-defined]
            str(tmp), safe_serialization=True
        )
    recent = module.losses[-100:]
    result = PretrainResult(model_dir, int(trainer.global_step), seconds, sum(recent) / max(len(recent), 1), len(images))
    if config.num_samples > 0:
        _save_samples(ema_unet, config, out / "samples.png")
    write_json(
        out / "pretrain.json",
        {
            "model_dir": str(model_dir),
            "steps": result.steps,
            "seconds_this_session": round(seconds, 1),
            "final_loss": result.final_loss,
            "num_images": result.num_images,
            "num_params": sum(p.numel() for p in ema_unet.parameters()),
            "config": to_dict(config),
        },
    )
    return result
