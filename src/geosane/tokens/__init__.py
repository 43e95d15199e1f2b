"""Weight tokens: tokenize/detokenize state dicts, the token store, and window datasets over it."""

from geosane.tokens.layer_types import LAYER_TYPE_NAMES, LayerType, infer_layer_type
from geosane.tokens.tokenizer import (
    DEFAULT_BUFFER_PATTERNS,
    DEFAULT_TOKEN_SIZE,
    MODES,
    TensorLayout,
    TokenizedModel,
    TokenizerError,
    detokenize,
    tokenize,
)

__all__ = [
    "DEFAULT_BUFFER_PATTERNS",
    "DEFAULT_TOKEN_SIZE",
    "LAYER_TYPE_NAMES",
    "MODES",
    "LayerType",
    "TensorLayout",
    "TokenizedModel",
    "TokenizerError",
    "detokenize",
    "infer_layer_type",
    "tokenize",
]
