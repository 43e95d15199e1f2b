"""Weight tokens: tokenize/detokenize state dicts, the token store, and window datasets over it.

Names are imported lazily (PEP 562) so that ``geosane --help``, which imports
``geosane.tokens.cli``, does not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geosane._lazy import lazy_exports

if TYPE_CHECKING:
    from geosane.tokens.layer_types import LAYER_TYPE_NAMES, LayerType, infer_layer_type
    from geosane.tokens.settings import (
        DEFAULT_BUFFER_PATTERNS,
        DEFAULT_TOKEN_SIZE,
        MODES,
        TokenizerError,
        TokenizerSettings,
    )
    from geosane.tokens.store import (
        StoreRecord,
        TokenStore,
        load_tokenized,
        save_tokenized,
        tokenize_zoo,
        verify_store,
        write_store_index,
    )
    from geosane.tokens.tokenizer import TensorLayout, TokenizedModel, detokenize, tokenize
    from geosane.tokens.windows import ModelWindows, WindowDataset

_EXPORTS = {
    "layer_types": ("LAYER_TYPE_NAMES", "LayerType", "infer_layer_type"),
    "store": (
        "StoreRecord", "TokenStore", "load_tokenized", "save_tokenized", "tokenize_zoo", "verify_store",
        "write_store_index",
    ),
    "settings": (
        "DEFAULT_BUFFER_PATTERNS", "DEFAULT_TOKEN_SIZE", "MODES", "TokenizerError", "TokenizerSettings",
    ),
    "tokenizer": ("TensorLayout", "TokenizedModel", "detokenize", "tokenize"),
    "windows": ("ModelWindows", "WindowDataset"),
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

__all__ = [
    "DEFAULT_BUFFER_PATTERNS",
    "DEFAULT_TOKEN_SIZE",
    "LAYER_TYPE_NAMES",
    "MODES",
    "LayerType",
    "ModelWindows",
    "StoreRecord",
    "TensorLayout",
    "TokenStore",
    "TokenizedModel",
    "TokenizerError",
    "TokenizerSettings",
    "WindowDataset",
    "detokenize",
    "infer_layer_type",
    "load_tokenized",
    "save_tokenized",
    "tokenize",
    "tokenize_zoo",
    "verify_store",
    "write_store_index",
]
