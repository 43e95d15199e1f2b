"""Training data for the autoencoder: token-store windows, held-out models, permuted views.

- **Split by model.** Held-out models (``data.val_models`` or a seeded ``val_fraction`` of the
  store) are never seen in training; validation reconstructs all their tokens (plain windows
  tiling each model), so the R^2 it reports is on unseen models.
- **A deterministic stream.** Training draws random contiguous windows with
  :class:`geosane.tokens.WindowDataset` (models weighted by token count, uniform start). Sample
  ``i`` of the run is item ``i % L`` of that dataset at epoch ``i // L``, a fixed function of the
  seed, so a resumed run starts the stream exactly where the checkpoint left it
  (:class:`StreamSampler`), and ``k`` micro-batches of ``b`` samples hold the same windows as one
  batch of ``k * b``. Each item carries its stream index (``sample``), from which the noise of
  its views is seeded.
- **Permuted views.** With ``loss.permutation_variants = K``, every training model gets ``K``
  function-preserving permutations of its hidden units (:mod:`geosane.autoencoder.permutation`),
  tokenized with the store's settings into a cache of ``K`` token stores next to the store
  (``<store>.permuted/v<j>``; built once, reused while the store and K are unchanged). The second
  view of a window is the same window (model, start) of one of the variants, chosen per sample.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler

from geosane.autoencoder.config import AutoencoderConfig
from geosane.autoencoder.permutation import find_permutation_groups, permute_state_dict, random_permutations
from geosane.console import console, make_progress
from geosane.errors import GeosaneError, cli_flags
from geosane.io import read_json, sha256_file, write_json
from geosane.tokens.store import StoreRecord, TokenStore, save_tokenized, write_store_index
from geosane.tokens.windows import ModelWindows, WindowDataset

__all__ = [
    "StreamSampler",
    "TokenWindowDataModule",
    "WindowStream",
    "build_permuted_variants",
    "check_store",
    "split_models",
    "token_scale",
    "with_store_token_size",
]

PERMUTED_FORMAT = "geosane-permuted-variants"


def _mix(*values: int) -> int:
    """A 63-bit seed from integers (stable across processes, unlike ``hash``)."""
    digest = hashlib.blake2b(repr(values).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def check_store(store: TokenStore, config: AutoencoderConfig) -> None:
    """Refuse a store that cannot train ``config``'s model (token size, window, positions).

    ``model.d_t`` unset takes the store's token size (:func:`with_store_token_size`); set, it must agree.
    """
    model = config.model
    if model.d_t is not None and store.token_size != model.d_t:
        raise GeosaneError(
            f"token store {store.path} has token size {store.token_size} but the autoencoder expects "
            f"d_t={model.d_t}; set model.d_t={store.token_size} or tokenize with token_size={model.d_t}",
            flags=cli_flags("token_size"),
        )
    if len(store) == 0:
        raise GeosaneError(f"token store {store.path} holds no models")
    longest = max(store.num_tokens)
    if model.window > longest:
        raise GeosaneError(
            f"window of {model.window} tokens is larger than every model in {store.path} "
            f"(longest: {longest} tokens); set model.window <= {longest}"
        )
    if model.position_encoding == "learned":
        max_layers = max((r.num_layers or 0) for r in store.records)
        if max_layers > model.max_layers:
            raise GeosaneError(
                f"models in {store.path} have up to {max_layers} layers but model.max_layers is "
                f"{model.max_layers} with learned positions; raise it or use position_encoding=hybrid"
            )


def with_store_token_size(config: AutoencoderConfig, store: TokenStore) -> AutoencoderConfig:
    """``config`` with ``model.d_t`` = the store's token size (:func:`check_store` refuses a set one
    that disagrees): the autoencoder takes its token size from the store it trains on."""
    check_store(store, config)
    model = dataclasses.replace(config.model, d_t=store.token_size)
    return dataclasses.replace(config, model=model)


def split_models(store: TokenStore, val_fraction: float, seed: int, val_models: Sequence[str] = ()) -> tuple[
    list[str], list[str]
]:
    """``(train_ids, val_ids)``: whole models, never windows. Explicit ``val_models`` win."""
    ids = store.ids
    if val_models:
        unknown = [m for m in val_models if m not in ids]
        if unknown:
            raise GeosaneError(f"data.val_models names models absent from {store.path}: {', '.join(unknown)}")
        val = [m for m in ids if m in set(val_models)]
    else:
        count = round(val_fraction * len(ids))
        count = min(max(count, 1 if val_fraction > 0 else 0), len(ids) - 1)
        order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(seed)).tolist()
        val = sorted((ids[i] for i in order[:count]), key=ids.index)
    train = [m for m in ids if m not in set(val)]
    if not train:
        raise GeosaneError("no training models left after holding out the validation models")
    return train, val


class WindowStream(Dataset[dict[str, torch.Tensor]]):
    """Random windows as an endless stream: item ``i`` = item ``i % L`` of epoch ``i // L``.

    With ``variants`` (token stores of permuted copies of the same models), items also carry
    ``tokens_b`` / ``mask_b``: the same window of a variant chosen from ``(seed, i)``.
    """

    def __init__(
        self,
        store: TokenStore,
        window: int,
        models: Sequence[str],
        seed: int,
        variants: Sequence[TokenStore] = (),
    ) -> None:
        self.windows = WindowDataset(store, window, sampling="tokens", seed=seed, models=list(models))
        self.length = len(self.windows)
        self.seed = seed
        self.store = store
        self.variants = list(variants)

    def __len__(self) -> int:  # one pass; the sampler runs past it through epochs
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        epoch, offset = divmod(int(index), self.length)
        if self.windows.epoch != epoch:
            self.windows.set_epoch(epoch)
        model, start = self.windows.locate(offset)
        item = self.store.read_window(model, start, self.windows.window)
        item["sample"] = torch.tensor(index, dtype=torch.long)
        if self.variants:
            pick = _mix(self.seed, index, 1) % len(self.variants)
            other = self.variants[pick].read_window(self.store.records[model].id, start, self.windows.window)
            item["tokens_b"], item["mask_b"] = other["tokens"], other["mask"]
        return item


class StreamSampler(Sampler[int]):
    """Stream indices of one rank, from optimizer step ``start_step`` to ``total_steps``.

    Per optimizer step the whole job consumes ``world * accumulate * batch_size`` consecutive
    samples; rank ``r`` takes micro-batch slices ``(micro * world + r) * batch_size`` onward.
    """

    def __init__(
        self, batch_size: int, accumulate: int, total_steps: int, start_step: int = 0, rank: int = 0, world: int = 1
    ) -> None:
        self.batch_size, self.accumulate, self.world, self.rank = batch_size, accumulate, world, rank
        self.start_step, self.total_steps = start_step, total_steps

    def __len__(self) -> int:
        # the whole run's length, also when resuming: Lightning restores how many batches of the
        # (single) epoch are done and counts the remaining ones against this length
        return self.total_steps * self.accumulate * self.batch_size

    def __iter__(self) -> Iterator[int]:
        for micro in range(self.start_step * self.accumulate, self.total_steps * self.accumulate):
            first = (micro * self.world + self.rank) * self.batch_size
            yield from range(first, first + self.batch_size)


def _store_fingerprint(store: TokenStore, models: Sequence[str]) -> dict[str, Any]:
    return {r.id: r.sha256 for r in store.records if r.id in set(models)}


def build_permuted_variants(
    store: TokenStore, models: Sequence[str], count: int, seed: int, out: str | os.PathLike[str]
) -> list[TokenStore]:
    """``count`` token stores holding a function-preserving permutation of each of ``models``.

    Each variant store has the source store's settings and the same ids; its tokens line up with
    the original's (same positions and masks: a permutation only moves values inside tensors).
    Reused when ``out/cache.json`` records the same source files, ``count`` and ``seed``.
    """
    from geosane.arch.meta import empty_architecture
    from geosane.arch.spec import ArchSpec
    from geosane.tokens import detokenize, tokenize

    out = Path(out).expanduser()
    wanted = {
        "format": PERMUTED_FORMAT,
        "source": str(store.path.resolve()),
        "models": _store_fingerprint(store, models),
        "count": count,
        "seed": seed,
    }
    cache = out / "cache.json"
    if cache.is_file() and read_json(cache) == wanted:
        return [TokenStore(out / f"v{j}") for j in range(count)]
    missing_arch = [m for m in models if not store.record(m).arch]
    if missing_arch:
        raise GeosaneError(
            f"permuted views need each model's architecture, but {', '.join(missing_arch)} in {store.path} "
            "has none recorded; set loss.permutation_variants=0"
        )
    settings = store.tokenizer
    records: list[list[StoreRecord]] = [[] for _ in range(count)]
    with make_progress() as progress:
        task = progress.add_task("permuted views", total=len(models) * count, status="")
        for index, model_id in enumerate(models):
            progress.update(task, status=model_id)
            record = store.record(model_id)
            module = empty_architecture(ArchSpec.from_dict(record.arch or {}), cpu_fallback=False)
            groups = find_permutation_groups(module)
            original = store.load(model_id)
            state = detokenize(original)
            for j in range(count):
                generator = torch.Generator().manual_seed(_mix(seed, index, j))
                permuted = permute_state_dict(state, groups, random_permutations(groups, generator))
                tm = None
                for candidate_module in (module, None):  # match however the store was tokenized
                    tm = tokenize(
                        permuted, **settings.tokenize_kwargs(), module=candidate_module, allow_nonfinite=True
                    )
                    if torch.equal(tm.positions, original.positions) and torch.equal(tm.mask, original.mask):
                        break
                    tm = None
                if tm is None:
                    raise GeosaneError(
                        f"cannot re-tokenize a permuted '{model_id}' onto the layout of {store.path}"
                    )
                path = out / f"v{j}" / "tokens" / f"{model_id}.safetensors"
                save_tokenized(tm, path, model_id=model_id)
                records[j].append(dataclasses.replace(record, sha256=sha256_file(path)))
                progress.advance(task)
    for j in range(count):
        write_store_index(out / f"v{j}", settings, records[j])
    write_json(cache, wanted)
    console.print(f"permuted views: {count} variant(s) of {len(models)} models in {out}")
    return [TokenStore(out / f"v{j}") for j in range(count)]


def token_scale(store: TokenStore, models: Sequence[str], max_models: int = 32) -> float:
    """Standard deviation of the real token entries of (up to ``max_models`` of) ``models``."""
    total = total_sq = count = 0.0
    for model_id in list(models)[:max_models]:
        tm = store.load(model_id)
        values = tm.tokens[tm.mask].double()
        total, total_sq, count = total + float(values.sum()), total_sq + float((values**2).sum()), count + values.numel()
    if count == 0:
        return 1.0
    var = total_sq / count - (total / count) ** 2
    return float(var**0.5) if var > 0 else 1.0


class TokenWindowDataModule(L.LightningDataModule):
    """Training stream over the training models and plain windows over the held-out models."""

    def __init__(self, config: AutoencoderConfig, start_step: int = 0) -> None:
        super().__init__()
        if config.data.store is None:
            raise GeosaneError("no token store given: set data.store=PATH")
        self.start_step = start_step
        self.store = TokenStore(config.data.store)
        self.config = config = with_store_token_size(config, self.store)  # checks the store too
        data = config.data
        self.train_ids, self.val_ids = split_models(self.store, data.val_fraction, data.split_seed, data.val_models)
        self.variants: list[TokenStore] = []

    @property
    def permuted_cache(self) -> Path:
        cache = self.config.data.permuted_cache
        return Path(cache) if cache else self.store.path.with_name(self.store.path.name + ".permuted")

    def prepare_data(self) -> None:
        count = self.config.loss.permutation_variants
        if count > 0:
            build_permuted_variants(self.store, self.train_ids, count, self.config.train.seed, self.permuted_cache)

    def setup(self, stage: str | None = None) -> None:
        count = self.config.loss.permutation_variants
        if count > 0 and not self.variants:
            self.variants = build_permuted_variants(
                self.store, self.train_ids, count, self.config.train.seed, self.permuted_cache
            )

    def _loader(self, dataset: Dataset[Any], **kwargs: Any) -> DataLoader[Any]:
        workers = self.config.data.num_workers
        return DataLoader(
            dataset,
            num_workers=workers,
            persistent_workers=workers > 0,
            generator=torch.Generator().manual_seed(self.config.train.seed),  # never draws from the global RNG
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader[Any]:
        cfg = self.config
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        stream = WindowStream(self.store, cfg.model.window, self.train_ids, cfg.train.seed, self.variants)
        sampler = StreamSampler(
            cfg.data.batch_size, cfg.train.accumulate, cfg.train.max_steps, self.start_step, rank, world
        )
        return self._loader(stream, batch_size=cfg.data.batch_size, sampler=sampler)

    def val_dataset(self) -> Dataset[Any] | None:
        if not self.val_ids:
            return None
        return ConcatDataset([ModelWindows(self.store, m, self.config.model.window) for m in self.val_ids])

    def val_dataloader(self) -> DataLoader[Any] | list[Any]:
        dataset = self.val_dataset()
        if dataset is None:
            return []
        return self._loader(dataset, batch_size=self.config.data.batch_size, shuffle=False)

    def describe(self) -> dict[str, Any]:
        return {
            "store": str(self.store.path),
            "train_models": self.train_ids,
            "val_models": self.val_ids,
            "train_tokens": sum(self.store.record(m).num_tokens for m in self.train_ids),
            "val_tokens": sum(self.store.record(m).num_tokens for m in self.val_ids),
        }

