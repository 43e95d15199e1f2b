"""Lightning runs that survive interruption: exact resume and a one-line Ctrl-C, for every stage.

Lightning's checkpoints restore weights, optimizer, scheduler and loop counters, but not the random
number generators, so a resumed run shuffles and augments differently from an uninterrupted one
(the data-order generator and the global RNGs start again from the seed).
:class:`ResumableRandomness` stores them in the checkpoint and puts them back on resume.
Lightning also turns Ctrl-C into ``sys.exit(1)`` with no word on how to go on;
:func:`fit_resumable` turns it into :class:`geosane.errors.Interrupted`, which the CLI prints as one
line and exit status 130.

The rest of the Lightning plumbing every stage shares lives here too: :class:`SafeCheckpointIO`
(checkpoints written atomically through ``geosane.io``, read weights-only), :class:`SaveLastCheckpoint`
(the resumable ``last`` checkpoint after every epoch and/or every N steps), :func:`quiet_lightning`
and the thread count of a stage (:func:`torch_threads`, :func:`keeps_torch_threads`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ParamSpec, TypeVar, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from geosane.errors import Interrupted
from geosane.io import load_torch, save_torch

__all__ = [
    "ResumableRandomness",
    "SafeCheckpointIO",
    "SaveLastCheckpoint",
    "fit_resumable",
    "keeps_torch_threads",
    "quiet_lightning",
    "torch_threads",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")

# Lightning chatter that says nothing to a geosane user (we set workers, devices and intervals on purpose)
_QUIET_PATTERNS = (
    ".*does not have many workers.*",
    ".*GPU available but not used.*",
    ".*treespec, LeafSpec.*",  # lightning vs torch 2.14 deprecation
    ".*resuming from a checkpoint that ended before the epoch ended.*",  # mid-epoch step checkpoints
    ".*The number of training batches.*is smaller than the logging interval.*",
    ".*Experiment logs directory.*",
)


def quiet_lightning() -> None:
    """Silence Lightning's info logs and the warnings above, for every run in this process."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for pattern in _QUIET_PATTERNS:
        warnings.filterwarnings("ignore", message=pattern)


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op CPU threads (``None``: leave torch's setting), restored afterwards.

    On a shared, busy machine one thread can be several times faster than two (thread-pool
    spinning), so stages take a thread setting; but the count also decides the order of float
    reductions: left behind, it makes every later stage of the same process compute other numbers
    than a resumed process that skipped the stage would.
    """
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def keeps_torch_threads(stage: Callable[_P, _R]) -> Callable[_P, _R]:
    """:func:`torch_threads` around a whole stage that sets its threads deep inside
    (``train.threads`` after the autoencoder's resume checks, difuse's ``num_threads``)."""

    @functools.wraps(stage)
    def run(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with torch_threads(None):
            return stage(*args, **kwargs)

    return run


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint I/O through ``geosane.io``: temp file + rename, read with ``weights_only=True``."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        save_torch(checkpoint, path)

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"checkpoint file not found: {path}")
        data: dict[str, Any] = load_torch(path, map_location=map_location or "cpu")
        return data


class SaveLastCheckpoint(Checkpoint):
    """Write ``path`` (full trainer state, for resuming) after every epoch and/or every N steps.

    Lightning's ``ModelCheckpoint(save_last=True)`` writes ``last.ckpt`` only in steps where it also
    saved a top-k checkpoint, so a run whose metric stops improving could not be resumed from its
    latest state; this callback always writes it, through the trainer's checkpoint I/O (atomic with
    :class:`SafeCheckpointIO`). The epoch-end save comes after the epoch's validation and after the
    module's own epoch-end hook (Lightning runs :class:`Checkpoint` callbacks last), so it holds exactly
    the state between two epochs and a resumed run continues bitwise (with :class:`ResumableRandomness`).
    """

    def __init__(self, path: str | os.PathLike[str], every_n_train_steps: int = 0, on_epoch_end: bool = True) -> None:
        super().__init__()
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


class ResumableRandomness(Callback):
    """Save the global torch / NumPy / Python RNG states and ``generators`` in checkpoints; restore them.

    Checkpoints are written between epochs, so restoring these states makes the rest of a resumed
    run draw exactly the numbers the uninterrupted run drew (data order, augmentation, dropout).
    States are stored as tensors and plain Python values, so the checkpoint still loads with
    ``torch.load(weights_only=True)``.
    """

    def __init__(self, **generators: torch.Generator) -> None:
        super().__init__()
        self.generators = generators

    def state_dict(self) -> dict[str, Any]:
        # legacy=True gives the tuple for the global MT19937 (numpy's stub also allows the dict form)
        kind, keys, pos, has_gauss, cached = cast(
            "tuple[str, np.ndarray[Any, Any], int, int, float]", np.random.get_state(legacy=True)
        )
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "python": random.getstate(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "generators": {name: g.get_state() for name, g in self.generators.items()},
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
        for name, g in self.generators.items():
            if name in state_dict["generators"]:
                g.set_state(state_dict["generators"][name])
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def fit_resumable(
    trainer: L.Trainer,
    *args: Any,
    resume_hint: str,
    resume_flags: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> None:
    """``trainer.fit(*args, **kwargs)``; on Ctrl-C raise :class:`Interrupted` carrying ``resume_hint``.

    ``resume_hint`` says how to continue, e.g. "rerun with resume=True"; ``resume_flags`` are its
    :attr:`~geosane.errors.GeosaneError.flags` (``{"rerun with resume=True": "rerun the same command
    with --resume"}``). Lightning has already stopped cleanly and kept the last checkpoint when it exits.
    """
    try:
        trainer.fit(*args, **kwargs)
    except SystemExit:
        if trainer.interrupted:
            raise Interrupted(resume_hint, flags=resume_flags) from None
        raise
