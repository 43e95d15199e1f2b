"""``timm:NAME``: a timm architecture with pretrained weights from the hub (or its cache).

Random weights only when explicitly asked for (``random_init=True``).
"""

from __future__ import annotations

from typing import Any

from geosane.arch.spec import ArchSpec, LoadedModel
from geosane.errors import SourceError, cli_flags

__all__ = ["resolve_timm"]


def resolve_timm(
    name: str, *, random_init: bool = False, in_chans: int | None = None, num_classes: int | None = None
) -> LoadedModel:
    import timm

    if not name:
        raise SourceError("timm source needs a model name, e.g. timm:resnet18")
    base_name = name.split(".")[0]
    if not timm.is_model(base_name):
        close = timm.list_models(f"*{base_name.split('_')[0]}*")[:5]
        raise SourceError(
            f"unknown timm model '{name}'" + (f"; similar: {', '.join(close)}" if close else "")
        )
    kwargs: dict[str, Any] = {}
    if in_chans is not None:
        kwargs["in_chans"] = in_chans
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    pretrained = not random_init
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except (RuntimeError, ValueError, TypeError) as exc:
        if "pretrained" in str(exc).lower() and pretrained:
            raise SourceError(
                f"timm:{name} has no pretrained weights ({exc}); pass random_init=True to use random weights",
                flags=cli_flags("random_init"),
            ) from None
        raise SourceError(f"cannot instantiate timm:{name} with {kwargs}: {exc}") from None
    except OSError as exc:  # hub unreachable and not cached (huggingface_hub errors derive from OSError)
        raise SourceError(
            f"pretrained weights for timm:{name} could not be fetched and are not cached ({type(exc).__name__}); "
            "connect to the internet, or pass random_init=True to use randomly initialised weights",
            flags=cli_flags("random_init"),
        ) from None
    cfg = getattr(model, "pretrained_cfg", {}) or {}
    info: dict[str, Any] = {
        "pretrained": pretrained,
        "in_chans": in_chans if in_chans is not None else cfg.get("num_channels", 3),
        "num_classes": getattr(model, "num_classes", num_classes),
        "license": cfg.get("license"),
        "task": "classification",
        "modality": "rgb" if (in_chans in (None, 3)) else f"{in_chans}-band",
    }
    arch = ArchSpec("timm", name, kwargs)
    return LoadedModel(source=f"timm:{name}", state_dict=dict(model.state_dict()), arch=arch, info=info)
