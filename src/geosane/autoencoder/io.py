"""Save and load a trained autoencoder: ``autoencoder.safetensors`` with its config in the metadata.

:func:`load_autoencoder` also accepts a training checkpoint (``.ckpt``, read with
``torch.load(weights_only=True)``) or a run directory holding ``autoencoder.safetensors``; nothing
is ever unpickled beyond tensors and plain containers.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from geosane.autoencoder.config import ModelConfig
from geosane.autoencoder.model import WeightAutoencoder
from geosane.config import from_dict, to_dict
from geosane.errors import ConfigError, GeosaneError
from geosane.io import load_torch, save_safetensors
from geosane.tokens.settings import TokenizerError, TokenizerSettings

__all__ = ["EXPORT_FORMAT", "load_autoencoder", "save_autoencoder", "tokenizer_settings"]

EXPORT_FORMAT = "geosane-autoencoder"


def save_autoencoder(
    model: WeightAutoencoder,
    path: str | os.PathLike[str],
    extra: Mapping[str, str] | None = None,
    tokenizer: TokenizerSettings | None = None,
) -> Path:
    """Atomically write the weights as safetensors; the model config travels as JSON metadata, and
    so do the training store's ``tokenizer`` settings (generation re-tokenizes prompts with them)."""
    if tokenizer is not None and tokenizer.token_size != model.token_size:
        raise GeosaneError(
            f"tokenizer settings of token size {tokenizer.token_size} do not fit an autoencoder of d_t={model.token_size}"
        )
    metadata = {"format": EXPORT_FORMAT, "version": "1", "config": json.dumps(to_dict(model.config))}
    if tokenizer is not None:
        metadata["tokenizer"] = tokenizer.to_json()
    metadata.update(extra or {})
    state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    return save_safetensors(state, path, metadata=metadata)


def _model_config(data: Any, path: Path) -> ModelConfig:
    try:
        return from_dict(ModelConfig, data, "model")
    except ConfigError as exc:
        raise GeosaneError(f"{path}: the stored autoencoder config is invalid ({exc})") from None


def _from_safetensors(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            if metadata.get("format") != EXPORT_FORMAT or "config" not in metadata:
                raise GeosaneError(f"{path} is not a geosane autoencoder export (no autoencoder config in its metadata)")
            state = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    except (SafetensorError, OSError) as exc:
        raise GeosaneError(f"cannot read {path}: {exc}") from None
    return _model_config(json.loads(metadata["config"]), path), state, metadata


def _from_checkpoint(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict[str, str]]:
    data = load_torch(path)  # a truncated file or an unsafe pickle: one line, nothing run
    extra = data.get("geosane") if isinstance(data, dict) else None
    if not extra or "config" not in extra:
        raise GeosaneError(f"{path} is not a geosane autoencoder training checkpoint")
    state = {k.removeprefix("model."): v for k, v in data["state_dict"].items() if k.startswith("model.")}
    metadata = {"steps": str(data.get("global_step", ""))}
    store = (extra["config"].get("data") or {}).get("store")
    if store and (Path(store) / "index.json").is_file():  # the training store's tokenizer settings, as an export has
        from geosane.tokens.store import TokenStore

        metadata["tokenizer"] = TokenStore(store).tokenizer.to_json()
    return _model_config(extra["config"]["model"], path), state, metadata


def load_autoencoder(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> tuple[
    WeightAutoencoder, dict[str, str]
]:
    """``(model in eval mode, metadata)`` from an export, a training checkpoint or a run directory."""
    path = Path(path).expanduser()
    if path.is_dir():
        path = path / "autoencoder.safetensors"
    if not path.is_file():
        raise GeosaneError(f"autoencoder not found: {path}")
    config, state, metadata = _from_checkpoint(path) if path.suffix == ".ckpt" else _from_safetensors(path)
    model = WeightAutoencoder(config)
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise GeosaneError(f"{path}: weights do not match the stored config ({str(exc).splitlines()[0]})") from None
    return model.to(device).eval(), metadata


def tokenizer_settings(model: WeightAutoencoder, metadata: Mapping[str, str]) -> TokenizerSettings:
    """The tokenizer settings of the store ``model`` was trained on, from :func:`load_autoencoder`'s
    metadata. Exports older than the record (no ``tokenizer`` key) were trained on a dense store
    with the default patterns; the token size is always the model's ``d_t``."""
    if "tokenizer" not in metadata:
        return TokenizerSettings(token_size=model.token_size)
    try:
        settings = TokenizerSettings.from_dict({"token_size": model.token_size, **json.loads(metadata["tokenizer"])})
    except (ValueError, TokenizerError) as exc:
        raise GeosaneError(f"the autoencoder's recorded tokenizer settings are invalid ({exc})") from None
    if settings.token_size != model.token_size:
        raise GeosaneError(
            f"the autoencoder's recorded tokenizer settings have token size {settings.token_size}, "
            f"but the autoencoder takes tokens of d_t={model.token_size}"
        )
    return settings
