"""The autoencoder takes d_t from its token store and records the store's tokenizer settings;
exports written before TokenizerSettings existed still load."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from geosane.autoencoder import load_autoencoder_config
from geosane.autoencoder.config import ModelConfig
from geosane.autoencoder.data import with_store_token_size
from geosane.autoencoder.io import load_autoencoder, save_autoencoder, tokenizer_settings
from geosane.autoencoder.model import WeightAutoencoder
from geosane.errors import GeosaneError
from geosane.tokens import DEFAULT_BUFFER_PATTERNS, DEFAULT_TOKEN_SIZE, TokenizerSettings, TokenStore

SMALL = {"d_model": 32, "n_heads": 2, "n_layers": 1, "lat_dim": 8, "window": 8, "proj_hidden": 8, "proj_dim": 4}
# the model config of an export as geosane wrote it before d_t could be left unset (every field given)
OLD_CONFIG = {
    "d_t": 32, "d_model": 32, "n_heads": 2, "n_layers": 1, "lat_dim": 8, "window": 8, "n_index": "window",
    "position_encoding": "hybrid", "max_n": 4096, "max_layers": 1024, "max_chunks": 4096, "num_layer_types": 16,
    "proj_hidden": 8, "proj_dim": 4, "dropout": 0.0, "attention": "sdpa",
}  # fmt: skip


def _old_export(path: Path, tokenizer: str | None) -> Path:
    """An ``autoencoder.safetensors`` in the exact old layout, written without geosane's writer."""
    model = WeightAutoencoder(ModelConfig(**OLD_CONFIG))  # type: ignore[arg-type]
    metadata = {"format": "geosane-autoencoder", "version": "1", "config": json.dumps(OLD_CONFIG), "steps": "7"}
    if tokenizer is not None:
        metadata["tokenizer"] = tokenizer
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(path), metadata=metadata)
    return path


def test_an_old_export_without_a_tokenizer_record_means_a_dense_default_store(tmp_path: Path) -> None:
    model, metadata = load_autoencoder(_old_export(tmp_path / "ae.safetensors", None))
    assert model.config.d_t == 32 and metadata["steps"] == "7" and "tokenizer" not in metadata
    assert tokenizer_settings(model, metadata) == TokenizerSettings(32, "dense", None, (), DEFAULT_BUFFER_PATTERNS)


def test_an_old_export_with_the_stores_settings_dict_loads(tmp_path: Path) -> None:
    old = {"token_size": 32, "mode": "row", "include": None, "exclude": ["head.*"], "buffers": []}
    model, metadata = load_autoencoder(_old_export(tmp_path / "ae.safetensors", json.dumps(old)))
    settings = tokenizer_settings(model, metadata)
    assert settings == TokenizerSettings(32, "row", exclude=("head.*",), buffers=())  # [] stays empty
    partial = {"mode": "dense"}  # only the mode recorded: the token size is the model's
    model, metadata = load_autoencoder(_old_export(tmp_path / "ae2.safetensors", json.dumps(partial)))
    assert tokenizer_settings(model, metadata) == TokenizerSettings(32)


def test_a_record_that_disagrees_with_the_model_is_refused(tmp_path: Path) -> None:
    model, metadata = load_autoencoder(_old_export(tmp_path / "ae.safetensors", json.dumps({"token_size": 64})))
    with pytest.raises(GeosaneError, match=r"recorded tokenizer settings have token size 64, but the autoencoder takes tokens of d_t=32"):
        tokenizer_settings(model, metadata)
    with pytest.raises(GeosaneError, match=r"token size 64 do not fit an autoencoder of d_t=32"):
        save_autoencoder(model, tmp_path / "new.safetensors", tokenizer=TokenizerSettings(64))
    assert not (tmp_path / "new.safetensors").exists()


def test_save_writes_the_settings_as_the_stores_json_record(tmp_path: Path) -> None:
    model = WeightAutoencoder(ModelConfig(d_t=32, **SMALL))  # type: ignore[arg-type]
    settings = TokenizerSettings(32, exclude=["fc.*"])
    _, metadata = load_autoencoder(save_autoencoder(model, tmp_path / "ae.safetensors", tokenizer=settings))
    assert json.loads(metadata["tokenizer"]) == settings.to_dict()
    assert tokenizer_settings(load_autoencoder(tmp_path / "ae.safetensors")[0], metadata) == settings


def test_d_t_comes_from_the_store_and_a_set_one_must_agree(random_store: Path) -> None:
    store = TokenStore(random_store)
    cfg = load_autoencoder_config("tiny", [f"data.store={random_store}"])
    assert cfg.model.d_t is None  # no preset fixes the token size
    assert with_store_token_size(cfg, store).model.d_t == 32 == store.token_size
    agreeing = load_autoencoder_config("tiny", [f"data.store={random_store}", "model.d_t=32"])
    assert with_store_token_size(agreeing, store).model.d_t == 32
    other = load_autoencoder_config("tiny", [f"data.store={random_store}", "model.d_t=230"])
    with pytest.raises(GeosaneError, match=r"token size 32 but the autoencoder expects d_t=230; set model\.d_t=32"):
        with_store_token_size(other, store)


def test_a_model_built_without_a_store_uses_the_tokenizers_default() -> None:
    with torch.device("meta"):
        model = WeightAutoencoder(ModelConfig(**SMALL))  # type: ignore[arg-type]
    assert model.config.d_t == model.token_size == DEFAULT_TOKEN_SIZE
    assert model.encoder.input.in_features == DEFAULT_TOKEN_SIZE
