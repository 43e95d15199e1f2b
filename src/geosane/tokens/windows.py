"""PyTorch datasets of token windows over a :class:`~geosane.tokens.store.TokenStore`.

Each item is a dict (``docs/architecture.md``, "Window batches"): ``tokens`` f32 ``[W, d_t]``,
``mask`` bool ``[W, d_t]``, ``positions`` i64 ``[W, 3]``, ``layer_type`` i64 ``[W]``, ``valid``
bool ``[W]`` (False past a model's end), ``model_index`` i64 (index in the store) and ``start``
i64. Items are read through memory-mapped slices: only the window's rows are ever loaded.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Literal

import torch
from torch.utils.data import Dataset

from geosane.errors import GeosaneError
from geosane.tokens.store import TokenStore

__all__ = ["ModelWindows", "Sampling", "WindowDataset"]

Sampling = Literal["tokens", "models"]


def _open(store: TokenStore | str | os.PathLike[str]) -> TokenStore:
    return store if isinstance(store, TokenStore) else TokenStore(store)


def _check_window(window: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise GeosaneError(f"window must be a positive integer, got {window!r}")


class WindowDataset(Dataset[dict[str, torch.Tensor]]):
    """Random windows of ``window`` consecutive tokens from the models of a store.

    ``sampling="tokens"`` picks a model with probability proportional to its token count (every
    token is about equally likely to be seen); ``"models"`` picks models uniformly. The start is
    uniform over ``[0, max(N - window, 0)]``; a model shorter than the window is padded
    (``valid`` False). ``len`` is ``num_samples`` (default: ``ceil(total tokens / window)``).
    The windows are a fixed function of ``(seed, epoch, index)``; call :meth:`set_epoch` to draw
    fresh ones each epoch. ``models`` restricts sampling to some ids/indices (``model_index``
    in items stays the index in the store).
    """

    def __init__(
        self,
        store: TokenStore | str | os.PathLike[str],
        window: int = 256,
        *,
        sampling: Sampling = "tokens",
        num_samples: int | None = None,
        seed: int = 0,
        models: Sequence[int | str] | None = None,
    ) -> None:
        _check_window(window)
        if sampling not in ("tokens", "models"):
            raise GeosaneError(f"unknown window sampling {sampling!r} (choose from tokens, models)")
        self.store = _open(store)
        if len(self.store) == 0:
            raise GeosaneError(f"token store {self.store.path} holds no models")
        self.window = window
        self.token_size = self.store.token_size
        self.sampling = sampling
        self.seed = seed
        self.epoch = 0
        chosen = range(len(self.store)) if models is None else models
        self.model_indices = torch.tensor([self.store.index_of(m) for m in chosen], dtype=torch.long)
        if len(self.model_indices) == 0:
            raise GeosaneError("WindowDataset needs at least one model")
        self.model_tokens = torch.tensor(self.store.num_tokens, dtype=torch.long)[self.model_indices]
        total = int(self.model_tokens.sum())
        self.num_samples = num_samples if num_samples is not None else max(1, -(-total // window))
        if self.num_samples <= 0:
            raise GeosaneError(f"num_samples must be positive, got {num_samples}")
        self._draw()

    def _draw(self) -> None:
        generator = torch.Generator().manual_seed(
            (self.seed * 1_000_003 + self.epoch) & 0x7FFF_FFFF_FFFF_FFFF
        )
        weights = (
            self.model_tokens.double() if self.sampling == "tokens" else torch.ones(len(self.model_tokens))
        )
        pick = torch.multinomial(
            weights.clamp_min(0), self.num_samples, replacement=True, generator=generator
        )
        spans = (self.model_tokens[pick] - self.window).clamp_min(0) + 1
        offsets = (torch.rand(self.num_samples, generator=generator, dtype=torch.float64) * spans).long()
        self.models = self.model_indices[pick]
        self.starts = torch.minimum(offsets, spans - 1)

    def set_epoch(self, epoch: int) -> None:
        """Draw the windows of another epoch (deterministic given ``seed`` and ``epoch``)."""
        self.epoch = epoch
        self._draw()

    def __len__(self) -> int:
        return self.num_samples

    def locate(self, index: int) -> tuple[int, int]:
        """``(model_index, start)`` of item ``index``."""
        return int(self.models[index]), int(self.starts[index])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(index)
        model, start = self.locate(index)
        return self.store.read_window(model, start, self.window)

    def model_windows(self, model: int | str, halo: int = 0) -> ModelWindows:
        """All windows of one model in order (see :class:`ModelWindows`), with this dataset's window."""
        return ModelWindows(self.store, model, self.window, halo=halo)


class ModelWindows(Dataset[dict[str, torch.Tensor]]):
    """The windows of one model in order, for encoding/decoding a whole model.

    Window ``i`` starts at ``i * stride - halo`` with ``stride = window - 2 * halo``; its centre
    ``[i * stride, (i + 1) * stride)`` (the part to keep) tiles the model's tokens, and the halos
    give each centre context on both sides. ``halo=0`` tiles the model with plain windows.
    Positions before the first or past the last token are padding (``valid`` False).
    """

    def __init__(
        self, store: TokenStore | str | os.PathLike[str], model: int | str, window: int, *, halo: int = 0
    ) -> None:
        _check_window(window)
        if halo < 0 or window - 2 * halo <= 0:
            raise GeosaneError(f"halo must be >= 0 and leave a centre: window {window}, halo {halo}")
        self.store = _open(store)
        self.model_index = self.store.index_of(model)
        self.window = window
        self.halo = halo
        self.stride = window - 2 * halo
        self.num_tokens = self.store.records[self.model_index].num_tokens
        self.count = max(1, -(-self.num_tokens // self.stride))

    def __len__(self) -> int:
        return self.count

    def start(self, index: int) -> int:
        return index * self.stride - self.halo

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return self.store.read_window(self.model_index, self.start(index), self.window)
