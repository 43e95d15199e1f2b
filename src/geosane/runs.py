"""Lightning runs that survive interruption: exact resume and a one-line Ctrl-C, for every stage.

Lightning's checkpoints restore weights, optimizer, scheduler and loop counters, but not the random
number generators, so a resumed run shuffles and augments differently from an uninterrupted one
(the data-order generator and the global RNGs start again from the seed).
:class:`ResumableRandomness` stores them in the checkpoint and puts them back on resume.
Lightning also turns Ctrl-C into ``sys.exit(1)`` with no word on how to go on;
:func:`fit_resumable` turns it into :class:`geosane.errors.Interrupted`, which the CLI prints as one
line and exit status 130.
"""

from __future__ import annotations

import random
from typing import Any, cast

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from geosane.errors import Interrupted

__all__ = ["ResumableRandomness", "fit_resumable"]


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


def fit_resumable(trainer: L.Trainer, *args: Any, resume_hint: str, **kwargs: Any) -> None:
    """``trainer.fit(*args, **kwargs)``; on Ctrl-C raise :class:`Interrupted` carrying ``resume_hint``.

    ``resume_hint`` says how to continue, e.g. "rerun the same command to resume from its last
    checkpoint". Lightning has already stopped cleanly and kept the last checkpoint when it exits.
    """
    try:
        trainer.fit(*args, **kwargs)
    except SystemExit:
        if trainer.interrupted:
            raise Interrupted(resume_hint) from None
        raise
