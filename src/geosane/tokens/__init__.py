"""Weight tokens: tokenize/detokenize state dicts, the token store, and window datasets over it.

Names are imported lazily (PEP 562) so that ``geosane --help``, which imports
``geosane.tokens.cli``, does not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

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
    "geosane.tokens.layer_types": ("LAYER_TYPE_NAMES", "LayerType", "infer_layer_type"),
    "geosane.tokens.store": (
        "StoreRecord", "TokenStore", "load_tokenized", "save_tokenized", "tokenize_zoo", "verify_store",
        "write_store_index",
    ),
    "geosane.tokens.settings": (
        "DEFAULT_BUFFER_PATTERNS", "DEFAULT_TOKEN_SIZE", "MODES", "TokenizerError", "TokenizerSettings",
    ),
    "geosane.tokens.tokenizer": ("TensorLayout", "TokenizedModel", "detokenize", "tokenize"),
    "geosane.tokens.windows": ("ModelWindows", "WindowDataset"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

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


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'geosane.tokens' has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
