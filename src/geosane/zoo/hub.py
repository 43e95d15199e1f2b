"""Discover models on the Hugging Face Hub (``geosane zoo search``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from geosane.errors import GeosaneError

if TYPE_CHECKING:
    from huggingface_hub.hf_api import ExpandModelProperty_T

__all__ = ["search_hub"]

_EXPAND: list[ExpandModelProperty_T] = ["downloads", "likes", "tags", "safetensors", "pipeline_tag", "library_name", "usedStorage"]


def _license(tags: Sequence[str]) -> str | None:
    return next((t.split(":", 1)[1] for t in tags if t.startswith("license:")), None)


def search_hub(query: str, tags: Sequence[str] = (), limit: int = 20) -> list[dict[str, Any]]:
    """Hub models matching ``query`` (and every tag in ``tags``), most downloaded first.

    Each row: ``id``, ``license``, ``downloads``, ``likes``, ``params`` (safetensors parameter
    count, when the Hub knows it), ``size_bytes`` (storage), ``task``, ``library``, ``tags``.
    Network problems raise a :class:`GeosaneError` with one line saying what failed.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import logging as hf_logging

    from geosane.zoo.schemes.hf import network_errors

    if constants.HF_HUB_OFFLINE:
        raise GeosaneError("cannot search the Hugging Face Hub: offline mode is on (HF_HUB_OFFLINE=1)")
    hf_logging.set_verbosity_error()  # the Hub client logs every retry; we report one line instead
    try:
        models = list(
            HfApi().list_models(
                search=query or None, filter=list(tags) or None, sort="downloads", limit=limit, expand=_EXPAND
            )
        )
    except network_errors() as exc:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise GeosaneError(
            f"cannot search the Hugging Face Hub ({type(exc).__name__}: {detail[:160]}); check the connection "
            "or HF_ENDPOINT"
        ) from None
    rows = []
    for model in models:
        model_tags = list(model.tags or [])
        safetensors = getattr(model, "safetensors", None)
        rows.append(
            {
                "id": model.id,
                "license": _license(model_tags),
                "downloads": model.downloads,
                "likes": model.likes,
                "params": getattr(safetensors, "total", None) if safetensors else None,
                "size_bytes": getattr(model, "used_storage", None),
                "task": model.pipeline_tag,
                "library": model.library_name,
                "tags": model_tags,
            }
        )
    return rows
