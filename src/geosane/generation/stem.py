"""Stem adaptation now lives in :mod:`geosane.arch.stem` (downstream uses it too); re-exported here."""

from geosane.arch.stem import adapt_stem, stem_weight_names

__all__ = ["adapt_stem", "stem_weight_names"]
