"""Tokenizer settings as one typed value, importable without torch.

A token store records the settings it was built with in ``index.json``; an autoencoder export
records its training store's settings in its metadata (``tokenizer``, the same JSON); generation
re-tokenizes prompts with them. :class:`TokenizerSettings` is that record, written and read by
the same code (:meth:`~TokenizerSettings.to_dict` / :meth:`~TokenizerSettings.from_dict`), so
the defaults live here once. The JSON layout is the one stores have always had::

    {"token_size": 230, "mode": "dense", "include": null, "exclude": [], "buffers": [...]}

Older records may lack keys: a missing ``mode`` is ``dense``, a missing ``exclude`` is empty and
a missing ``buffers`` is :data:`DEFAULT_BUFFER_PATTERNS` (what :func:`geosane.tokens.tokenize`
uses by default); an explicit empty ``buffers`` list stays empty.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from geosane.errors import GeosaneError

__all__ = [
    "DEFAULT_BUFFER_PATTERNS",
    "DEFAULT_TOKEN_SIZE",
    "MODES",
    "TokenizerError",
    "TokenizerSettings",
]

MODES: tuple[str, ...] = ("dense", "row")
DEFAULT_TOKEN_SIZE = 230
# non-learnable tensors of a bare state dict (with a module, its registered buffers are used instead)
DEFAULT_BUFFER_PATTERNS: tuple[str, ...] = ("*running_mean", "*running_var", "*num_batches_tracked")
SETTING_KEYS: tuple[str, ...] = ("token_size", "mode", "include", "exclude", "buffers")


class TokenizerError(GeosaneError):
    """The state dict, the tokens or the tokenizer settings are unusable."""


def _check_settings(token_size: object, mode: object) -> None:
    if isinstance(token_size, bool) or not isinstance(token_size, int) or token_size <= 0:
        raise TokenizerError(f"token_size must be a positive integer, got {token_size!r}")
    if mode not in MODES:
        raise TokenizerError(f"unknown tokenization mode {mode!r} (choose from {', '.join(MODES)})")


def _patterns(value: object, key: str) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Sequence) or not all(isinstance(p, str) for p in value):
        raise TokenizerError(f"tokenizer setting '{key}' must be a list of glob patterns, got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class TokenizerSettings:
    """How a state dict becomes tokens (the arguments of :func:`geosane.tokens.tokenize` that a
    store fixes): token size, mode, and the glob patterns that choose what is tokenized."""

    token_size: int = DEFAULT_TOKEN_SIZE
    mode: str = "dense"
    include: tuple[str, ...] | None = None
    exclude: tuple[str, ...] = ()
    buffers: tuple[str, ...] = field(default=DEFAULT_BUFFER_PATTERNS)

    def __post_init__(self) -> None:
        _check_settings(self.token_size, self.mode)
        # lists given by a caller become tuples: the value is hashable and compares by content
        if self.include is not None:
            object.__setattr__(self, "include", _patterns(self.include, "include"))
        object.__setattr__(self, "exclude", _patterns(self.exclude, "exclude"))
        object.__setattr__(self, "buffers", _patterns(self.buffers, "buffers"))

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (lists, not tuples), as ``index.json`` and autoencoder exports hold it."""
        return {
            "token_size": self.token_size,
            "mode": self.mode,
            "include": list(self.include) if self.include is not None else None,
            "exclude": list(self.exclude),
            "buffers": list(self.buffers),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TokenizerSettings:
        """Settings from a record (other keys, e.g. an index's ``models``, are ignored; see the
        module docstring for what missing keys mean). Raises :class:`TokenizerError` when the
        record has no ``token_size`` or holds invalid values."""
        if not isinstance(data, Mapping) or "token_size" not in data:
            raise TokenizerError(f"tokenizer settings need a 'token_size', got {data!r}")
        buffers = data.get("buffers")
        return cls(
            token_size=data["token_size"],
            mode=data.get("mode") or "dense",
            include=data.get("include"),
            exclude=data.get("exclude") or (),
            buffers=DEFAULT_BUFFER_PATTERNS if buffers is None else buffers,
        )

    @classmethod
    def from_json(cls, text: str) -> TokenizerSettings:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TokenizerError(f"tokenizer settings are not valid JSON ({exc})") from None
        return cls.from_dict(data)

    def tokenize_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :func:`geosane.tokens.tokenize` for these settings."""
        return {
            "token_size": self.token_size,
            "mode": self.mode,
            "include": self.include,
            "exclude": self.exclude,
            "buffers": self.buffers,
        }

    def differences(self, other: TokenizerSettings) -> list[str]:
        """``key=mine (now theirs)`` for every setting that differs (for error messages)."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [f"{k}={mine[k]!r} (now {theirs[k]!r})" for k in SETTING_KEYS if mine[k] != theirs[k]]
