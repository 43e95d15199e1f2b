"""Lightning checkpoint I/O for difuser jobs: atomic writes, weights-only loading, safe directory swaps."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from geosane.io import load_torch, save_torch

__all__ = ["SafeCheckpointIO", "SaveLastCheckpoint", "atomic_directory"]


class SafeCheckpointIO(TorchCheckpointIO):
    """Checkpoints written through ``geosane.io.save_torch`` and read with ``weights_only=True`` only."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        save_torch(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Callable | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        return load_torch(path)


@contextmanager
def atomic_directory(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a fresh temporary directory next to ``target``; swap it in as ``target`` on success.

    A directory cannot be replaced in one rename when it exists, so the old one is first renamed
    aside and removed only after the new one is in place; on failure the temporary one is removed.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class SaveLastCheckpoint(Checkpoint):
    """Write ``path`` (full trainer state, for resuming) after every epoch and/or every N steps.

    Lightning's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only in steps where it also
    saved a top-k checkpoint, so a run whose metric stops improving could not be resumed from its
    latest state; this callback always writes it (atomically, through the trainer's checkpoint I/O).
    The epoch-end save comes after the epoch's validation and after the module's own epoch-end hook
    (Lightning runs :class:`Checkpoint` callbacks last), so it holds exactly the state between two
    epochs and a resumed run continues bitwise (with ``geosane.runs.ResumableRandomness``).
    """

    def __init__(self, path: str | os.PathLike[str], every_n_train_steps: int = 0, on_epoch_end: bool = True) -> None:
        self.path = Path(path)
        self.every_n_train_steps = every_n_train_steps
        self.on_epoch_end = on_epoch_end

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        n = self.every_n_train_steps
        if n > 0 and trainer.global_step > 0 and trainer.global_step % n == 0:
            trainer.save_checkpoint(self.path, weights_only=False)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.on_epoch_end:
            trainer.save_checkpoint(self.path, weights_only=False)
