"""``zoo:ZOO_DIR#MODEL_ID``: a model of a geosane zoo, and the one parser of such sources."""

from __future__ import annotations

from geosane.arch.spec import LoadedModel
from geosane.errors import SourceError
from geosane.zoo.manifest import Zoo

__all__ = ["load_zoo_source", "resolve_zoo", "split_zoo_source"]


def split_zoo_source(source: str) -> tuple[str, str] | None:
    """``(ZOO_DIR, MODEL_ID)`` of a ``zoo:ZOO_DIR#MODEL_ID`` source; None for any other string.

    The id follows the last ``#`` (a directory may hold one, an id never does); both parts must be
    non-empty.
    """
    if not source.startswith("zoo:"):
        return None
    zoo_dir, sep, model_id = source.removeprefix("zoo:").rpartition("#")
    if not sep or not zoo_dir or not model_id:
        return None
    return zoo_dir, model_id


def load_zoo_source(source: str) -> LoadedModel:
    """The model a ``zoo:ZOO_DIR#MODEL_ID`` source names, as its zoo stored it."""
    parsed = split_zoo_source(source)
    if parsed is None:
        raise SourceError(f"zoo source must look like zoo:ZOO_DIR#MODEL_ID, got '{source}'")
    zoo_dir, model_id = parsed
    return Zoo(zoo_dir).load(model_id)


def resolve_zoo(
    spec: str, *, random_init: bool = False, in_chans: int | None = None, num_classes: int | None = None
) -> LoadedModel:
    return load_zoo_source(f"zoo:{spec}")
